"""Human mesh recovery: body model, scenes, diffusion model, rendering, metrics. Imports nothing from
``agent`` or ``alignment`` (data flows hmr → agent → alignment → hmr).

What a notebook uses, importable from here (each loads on first access; importing this package loads no torch)::

    from hmrcritic.hmr import load_split, load_model, condition_from_keypoints, sample
    s = load_split("test")[0]                                          # Sample
    cond = condition_from_keypoints(s.keypoints[None], s.K[None], s.image_size)
    group = sample(load_model(), cond, num_generations=16)             # HypothesisGroup

``load_body_model`` / ``BodyModel`` live in ``hmr.body``; ``load_split`` / ``sample_from_user`` / ``Sample`` /
``SceneSet`` in ``hmr.data``; ``load_model`` / ``condition_from_keypoints`` / ``sample`` / ``HypothesisGroup`` /
``HMRDiffusion`` in ``hmr.diffusion``; ``evaluate_model`` (-> a flat dict of figures) in ``hmr.evaluate``.
Signatures: docs/CONTRACTS.md.
"""

from hmrcritic import _lazy_exports

_EXPORTS = {
    **dict.fromkeys(("load_body_model", "BodyModel"), "hmrcritic.hmr.body"),
    **dict.fromkeys(("load_split", "sample_from_user", "Sample", "SceneSet"), "hmrcritic.hmr.data"),
    **dict.fromkeys(("load_model", "condition_from_keypoints", "sample", "HypothesisGroup", "HMRDiffusion"),
                    "hmrcritic.hmr.diffusion"),
    "evaluate_model": "hmrcritic.hmr.evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())
