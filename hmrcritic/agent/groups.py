"""Labelled hypothesis groups for evaluating (and warming up) the critic.

A :class:`LabelledGroup` is one labelled input (a :class:`~hmrcritic.hmr.data.Sample`), N hypotheses and each
hypothesis' true PA-MPJPE (mm, LSP-14, Procrustes with scale). Two sources:

* :func:`groups_from_model` — the real thing: hypotheses sampled by the diffusion model
  (``hmr.diffusion.load_model()`` + ``sample``), several inputs per batched call.
* :func:`groups_from_perturbed_gt` — a fallback when no model checkpoint is available: the ground-truth pose
  with rotation noise of a different size per hypothesis (so a group spans good and bad hypotheses) and,
  for some hypotheses, a typical failure (one joint far off, a knee bent backwards). The camera
  translation of every hypothesis is re-solved from the 2D keypoints, as the diffusion sampler does, so
  image alignment stays as good as the pose allows. Nothing about the perturbation reaches the critic.

:func:`make_groups` picks the model when it loads, else the fallback, and says which it used.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hmrcritic.errors import AssetError, HMRCriticError, InputError


@dataclass
class LabelledGroup:
    group_id: str
    sample: Any
    hypotheses: dict[str, np.ndarray]  # global_orient (N,3), body_pose (N,69), betas (N,10), transl (N,3)
    errors_mm: np.ndarray  # (N,) true PA-MPJPE
    source: str = "perturbed"
    extra: dict = field(default_factory=dict)


def _labels(sample) -> dict[str, np.ndarray]:
    need = ("global_orient", "body_pose", "betas")
    if any(getattr(sample, k, None) is None for k in need):
        raise InputError(f"sample {getattr(sample, 'sample_id', '?')}: has no SMPL labels; use a labelled split")
    return {k: np.asarray(getattr(sample, k), dtype=np.float32) for k in (*need, "transl")
            if getattr(sample, k, None) is not None}


def true_errors(hyps: dict[str, np.ndarray], sample, body=None) -> np.ndarray:
    """PA-MPJPE (mm, lsp14) of each hypothesis against the sample's ground-truth body."""
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.metrics import pa_mpjpe

    body = body or load_body_model()
    lab = _labels(sample)
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in hyps.items() if k in ("global_orient", "body_pose",
                                                                                       "betas", "transl")}
    with torch.no_grad():
        pred = body(t["global_orient"], t["body_pose"], t["betas"], t["transl"]).joints
        if getattr(sample, "joints3d", None) is not None:
            gt = torch.as_tensor(np.asarray(sample.joints3d), dtype=torch.float32)[None]
        else:
            g = {k: torch.as_tensor(v)[None] for k, v in lab.items()}
            gt = body(g["global_orient"], g["body_pose"], g["betas"], g.get("transl")).joints
        return pa_mpjpe(pred, gt.expand_as(pred)).double().numpy()


def _compose(aa: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    from hmrcritic.hmr.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    return matrix_to_axis_angle(axis_angle_to_matrix(noise) @ axis_angle_to_matrix(aa))


# body_pose joint slots (SMPL joint index − 1) that the "one joint far off" failure picks from
_MAJOR = [0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 18]  # hips, spine1, knees, spine3, shoulders, elbows
_KNEES = [3, 4]


def perturb_group(sample, n: int, rng: np.random.Generator, body=None,
                  sigma_range: tuple[float, float] = (0.02, 0.25), p_big: float = 0.2,
                  p_hyper: float = 0.1) -> dict[str, np.ndarray]:
    """N hypotheses around the sample's true pose; see the module docstring."""
    from hmrcritic.hmr.body import load_body_model
    from hmrcritic.hmr.diffusion import solve_translation

    body = body or load_body_model()
    lab = _labels(sample)
    sig = np.exp(rng.uniform(np.log(sigma_range[0]), np.log(sigma_range[1]), n))
    bp = torch.as_tensor(lab["body_pose"]).reshape(1, 23, 3).repeat(n, 1, 1)
    noise = torch.as_tensor(rng.normal(0, 1, (n, 23, 3)) * sig[:, None, None], dtype=torch.float32)
    bp = _compose(bp, noise)
    for k in range(n):
        if rng.random() < p_big:
            j = int(rng.choice(_MAJOR))
            axis = rng.normal(0, 1, 3)
            axis /= np.linalg.norm(axis)
            bp[k, j] = _compose(bp[k, j], torch.as_tensor(axis * rng.uniform(0.7, 1.6), dtype=torch.float32))
        if rng.random() < p_hyper:
            j = int(rng.choice(_KNEES))
            bp[k, j] = torch.tensor([-rng.uniform(0.35, 0.9), 0.0, 0.0])
    go = torch.as_tensor(lab["global_orient"]).reshape(1, 3).repeat(n, 1)
    go = _compose(go, torch.as_tensor(rng.normal(0, 1, (n, 3)) * sig[:, None] * 0.5, dtype=torch.float32))
    betas = torch.as_tensor(lab["betas"]).reshape(1, 10) + torch.as_tensor(
        rng.normal(0, 1, (n, 10)) * sig[:, None], dtype=torch.float32)
    bp = bp.reshape(n, 69)
    with torch.no_grad():
        out = body(go, bp, betas, torch.zeros(n, 3))
        coco = body.coco17(out)
        kp = torch.as_tensor(np.asarray(sample.keypoints), dtype=torch.float32)[None].expand(n, -1, -1)
        K = torch.as_tensor(np.asarray(sample.K), dtype=torch.float32)[None].expand(n, -1, -1)
        transl = solve_translation(coco, kp, K)
    return {"global_orient": go.numpy(), "body_pose": bp.numpy(), "betas": betas.numpy(),
            "transl": transl.numpy().astype(np.float32)}


def _split(split):
    """A split by name, or the caller's own scenes (a ``SceneSet``, a list of samples). One sample or another
    object without ``len``/indexing is an :class:`InputError` here, not a TypeError from the first ``len()``."""
    if isinstance(split, str):
        from hmrcritic.hmr.data import load_split

        return load_split(split)
    if not (hasattr(split, "__len__") and hasattr(split, "__getitem__")) or isinstance(split, dict | bytes):
        hint = " (one sample: pass [sample])" if hasattr(split, "keypoints") else ""
        raise InputError(f"split must be a split name, a SceneSet or a list of samples{hint}, got "
                         f"{type(split).__name__}")
    return split


def verify_split(split, images: bool) -> None:
    """Check split ``split``'s shards (when it is a split's name) against their manifest's sha256 before its groups
    are made, as ``train-base``, ``data info`` and ``export`` do (:func:`hmrcritic.hmr.data.verify_split_files`):
    a shard truncated or replaced since generation (another generation's copied in) that still unpacks with the
    rows listed was explored, calibrated on or scored without a word. Once per command, not per batch (hashing the
    train split takes ~20 ms). Not wild's eval labels (a group needs the labels in the shards: wild is refused);
    ``images``: whether the critique reads the split's images (a VLM judge sends them, a rendering one draws on
    them; the builtin judge without rendering opens none). Given scenes (a list, a ``SceneSet``) are the
    caller's. A split not generated yet (or out of date) is not made here: the groups' own read generates it
    whole, and raises whatever else keeps it from being read."""
    if not isinstance(split, str):
        return
    from hmrcritic.hmr.data import load_split, verify_split_files

    try:
        scenes = load_split(split, generate=False, quiet=True)
    except AssetError:
        return
    manifest, folder = getattr(scenes, "manifest", None), getattr(scenes, "folder", None)
    if isinstance(manifest, dict) and folder is not None:
        verify_split_files(manifest, folder, labels=False, images=images)


def reads_images(judge: Any, render: Any = None) -> bool:
    """Whether critiques by ``judge`` (a name or a judge) read a sample's image: with rendering on (``render``
    truthy), or a judge that is not the builtin one (the VLM judge sends the image whatever ``render`` says)."""
    from hmrcritic.agent.judges import BuiltinJudge

    if isinstance(judge, str):  # by its name: a VLM judge is not built a second time (the callers make theirs)
        return bool(render) or judge.strip().lower() != "builtin"
    return bool(render) or not isinstance(judge, BuiltinJudge)


def _check_args(num_groups: int, num_generations: int, seed: int, start: int, batch: int = 1) -> None:
    """Refuse what would crash deep inside (``default_rng`` takes no negative seed, 0 hypotheses cannot be
    reshaped) or silently draw the wrong scenes (a negative ``start`` indexed from the end of the split, naming
    the groups ``test--00001``) — the same for both sources, so ``auto`` does not depend on the model loading."""
    from hmrcritic.hmr.diffusion import MAX_GENERATIONS

    for name, value, low in (("num_groups", num_groups, 0), ("start", start, 0), ("seed", seed, 0),
                             ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise InputError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if isinstance(num_generations, bool) or not isinstance(num_generations, int | np.integer) \
            or not 1 <= num_generations <= MAX_GENERATIONS:
        raise InputError(f"num_generations must be in 1..{MAX_GENERATIONS}, got {num_generations!r}")


def _group_ids(scenes, indices: list[int]) -> dict[int, str]:
    """``<split>-<index>`` for a split; for scenes without a name (a caller's own list of samples) each sample's
    id, made unique by its position where two share one. ``str(split)`` named them after the repr of the whole
    list, arrays included: ids of ~10k characters, in every run folder name, trace and export record."""
    name = getattr(scenes, "name", None)
    if isinstance(name, str) and name:
        return {i: f"{name}-{i:06d}" for i in indices}
    sids = {i: str(getattr(scenes[i], "sample_id", None) or f"sample-{i:06d}") for i in indices}
    seen = Counter(sids.values())
    return {i: sid if seen[sid] == 1 else f"{sid}-{i:06d}" for i, sid in sids.items()}


def split_scene(scene_id: str) -> tuple[str, int] | None:
    """``(split, index)`` of a split scene's id ``<split>-<index>`` (as :func:`_group_ids` names them), or None for
    any other id (a user's image, a caller's own samples)."""
    from hmrcritic.hmr.data import SPLITS

    split, _, index = str(scene_id).rpartition("-")
    # at most 18 digits: an id with thousands (an imported memory's explored_on.json is any text) raised Python's
    # int-parsing ValueError out of the learning curve; no split holds a scene past 10**18
    return (split, int(index)) if split in SPLITS and index.isascii() and index.isdigit() and len(index) <= 18 \
        else None


def _indices(scenes, num_groups: int, start: int) -> list[int]:
    if len(scenes) <= start:
        raise InputError(f"split has {len(scenes)} samples; cannot start at {start}")
    return list(range(start, min(len(scenes), start + num_groups)))


def groups_from_perturbed_gt(split="test", num_groups: int = 20, num_generations: int = 16, seed: int = 0,
                             start: int = 0) -> list[LabelledGroup]:
    from hmrcritic.hmr.body import load_body_model

    _check_args(num_groups, num_generations, seed, start)
    scenes = _split(split)
    body = load_body_model()
    out = []
    indices = _indices(scenes, num_groups, start)
    ids = _group_ids(scenes, indices)
    for i in indices:
        s = scenes[i]
        rng = np.random.default_rng([seed, i])
        hyps = perturb_group(s, num_generations, rng, body=body)
        out.append(LabelledGroup(ids[i], s, hyps, true_errors(hyps, s, body), source="perturbed"))
    return out


def _check_progress(progress) -> None:
    """``progress`` must be a ``(done, total)`` callable or None, said before any group is made: ``progress=True``
    (what reproduce and finetune take) was "'bool' object is not callable" once the groups were sampled."""
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a callable (done, total) or None, got {type(progress).__name__}")


def groups_from_model(split="test", num_groups: int = 20, num_generations: int = 16, seed: int = 0,
                      start: int = 0, model=None, steps: int = 10, batch: int = 8,
                      progress: Callable[[int, int], None] | None = None) -> list[LabelledGroup]:
    """Groups sampled by the diffusion model (``model``: a loaded model or a checkpoint path; default: the shipped
    base checkpoint). ``progress(done, total)`` is called after each batch of ``batch`` groups: sampling the
    hundreds of groups an evaluation or ``reproduce``'s exploration needs takes tens of seconds on a CPU, and
    the commands said nothing meanwhile. Display only: the groups are the same with or without it."""
    from hmrcritic.hmr import diffusion
    from hmrcritic.hmr.body import load_body_model

    _check_args(num_groups, num_generations, seed, start, batch)
    _check_progress(progress)
    scenes = _split(split)
    # a checkpoint path is loaded, as make_groups(model_path=...) does: passing it as model= failed as
    # "'str' object has no attribute 'eval'"
    model = diffusion.load_model(model) if model is None or isinstance(model, str | os.PathLike) else model
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be an HMRDiffusion, a checkpoint path or None, got {type(model).__name__}")
    model.eval()
    body = load_body_model()  # the true errors are measured on the CPU
    # the translation solve runs beside the network: a model on CUDA with the CPU body failed on mixed devices
    sample_body = load_body_model(device=str(model.alphas_cumprod.device))
    idx = _indices(scenes, num_groups, start)
    ids = _group_ids(scenes, idx)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for b0 in range(0, len(idx), batch):
        chunk = [scenes[i] for i in idx[b0:b0 + batch]]
        kp = torch.as_tensor(np.stack([s.keypoints for s in chunk]), dtype=torch.float32)
        K = torch.as_tensor(np.stack([s.K for s in chunk]), dtype=torch.float32)
        size = torch.as_tensor(np.stack([np.asarray(s.image_size) for s in chunk]), dtype=torch.float32)
        cond = diffusion.condition_from_keypoints(kp, K, size)
        group = diffusion.sample(model, cond, num_generations=num_generations, steps=steps, generator=gen,
                                 K=K, keypoints=kp, body=sample_body)
        for b, s in enumerate(chunk):
            hyps = {k: v for k, v in group.numpy(b).items() if k != "x0"}
            out.append(LabelledGroup(ids[idx[b0 + b]], s, hyps, true_errors(hyps, s, body),
                                     source="model"))
        if progress is not None:
            progress(len(out), len(idx))
    return out


def make_groups(split="test", num_groups: int = 20, num_generations: int = 16, seed: int = 0,
                start: int = 0, source: str = "auto", model_path=None,
                progress: Callable[[int, int], None] | None = None) -> tuple[list[LabelledGroup], str]:
    """Groups from ``source`` ("model" | "perturbed" | "auto": the model if it loads, else perturbed).
    ``progress(done, total)``: as :func:`groups_from_model` (perturbed groups, made in a moment, report once)."""
    _check_args(num_groups, num_generations, seed, start)  # before a model is loaded for nothing
    _check_progress(progress)
    model = group_model(source, model_path)
    if model is not None:
        return groups_from_model(split, num_groups, num_generations, seed, start, model=model,
                                 progress=progress), "model"
    got = groups_from_perturbed_gt(split, num_groups, num_generations, seed, start)
    if progress is not None:
        progress(len(got), len(got))
    return got, "perturbed"


def group_model(source: str = "auto", model_path=None):
    """The diffusion model groups of ``source`` are sampled by, or None where they are perturbed ground truth:
    "perturbed", or "auto" when the model does not load ("model" then raises AssetError)."""
    if source not in ("auto", "model", "perturbed"):
        raise InputError(f"group source {source!r}: choose auto, model or perturbed")
    if source == "perturbed":
        return None
    try:
        from hmrcritic.hmr import diffusion

        return diffusion.load_model(model_path)
    except (HMRCriticError, ImportError, FileNotFoundError) as exc:
        if source == "model":
            raise AssetError(f"diffusion model could not be loaded: {exc}") from exc
        return None
