"""CLI command groups. Each module defines ``register(app: typer.Typer)``; ``hmrcritic.cli`` imports them."""
