"""Human mesh recovery: body model, scenes, diffusion model, rendering, metrics. Imports nothing from
``agent`` or ``alignment`` (data flows hmr → agent → alignment → hmr)."""
