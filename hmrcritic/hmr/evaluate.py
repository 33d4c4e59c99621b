"""Evaluation of a diffusion HMR model on a labelled split (``hmrcritic evaluate``).

For each input the model draws a group of N hypotheses (DDIM, fixed per-batch seeds, so a run is
reproducible). Reported, all in mm on the ``lsp14`` joint set unless named otherwise:

- MPJPE (mid-hip aligned), PA-MPJPE (Procrustes with scale), PVE (pelvis aligned, all vertices), each as
  the mean over hypotheses, the oracle best-of-N (the paper's headline figure) and the "mean pose"
  (hypotheses' x0 averaged, rotations re-orthonormalised by the 6D map);
- 2D reprojection error (px) of the COCO-17 joints against the visible input keypoints: ``reproj_px`` is
  the per-group median (a hypothesis whose best fit is a body squeezed in front of the lens projects
  thousands of px off and would swamp a mean; ``reproj_mean_px`` is that mean), ``reproj_best_px`` the best;
  ``reproj_behind_camera_rate`` is the share of hypotheses with a joint of a visible keypoint at or behind
  the camera (depth ≤ 0): its projection is undefined, the depth clamp puts it millions of px away, and a
  handful of them is what a huge ``reproj_mean_px`` (e.g. on ``wild``) is made of;
- implausible-hypothesis rate (joint limits or self-penetration, ``hmr/anatomy.is_implausible``);
- diversity (None with one hypothesis per group): mean pairwise joint distance within a group (root-relative,
  mm) over the SMPL joints whose COCO keypoint is visible vs occluded (``COCO_TO_SMPL``); ``*_aligned`` does
  the same after similarity-aligning each hypothesis to the group mean, so global-orientation spread does not count;
  ``*_balanced`` compares each joint with itself (aligned spread of joint j where it is visible vs where it
  is occluded, then averaged over joints), because occluded joints are mostly distal ones (wrists, ankles)
  and the plain sets mix joint types;
- a nearest-neighbour baseline: the training pose whose box-normalised 2D keypoints are closest.

``select_fn`` is the hook for "critic top-1" (alignment stage): given a batch context it returns per-input
scores (B,N) (higher = better) or chosen indices (B,), and the selected hypothesis's errors are reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch

from hmrcritic.errors import AssetError, InputError, check_number, keywords_checked
from hmrcritic.hmr.diffusion import (
    X_DIM,
    HMRDiffusion,
    HypothesisGroup,
    check_sampling_args,
    condition_from_keypoints,
    ddim_sample_x0,
    reprojection_energy,
    solve_translation,
    x0_to_params,
)
from hmrcritic.hmr.diffusion import sample as diffusion_sample

# Hypotheses (B·N rows) per network / body-model / metric pass. One pass over all rows of a batch peaked at about
# 0.63 MB a row (the body model's per-vertex transforms, the network's attention): `evaluate -n 1024` at the
# default batch of 32 needed ~21 GB and failed after the splits had loaded. A chunk of 512 rows peaks at ~0.3 GB.
CHUNK_ROWS = 512

# COCO-17 keypoint → SMPL joint (used to split joints into visible / occluded for the diversity figure).
# The five face keypoints all map to the head; SMPL joints with no COCO counterpart (pelvis, spine, neck,
# collars) are left out of both sets; feet and hands follow the ankles and wrists.
COCO_TO_SMPL = {
    0: 15,
    1: 15,
    2: 15,
    3: 15,
    4: 15,
    5: 16,
    6: 17,
    7: 18,
    8: 19,
    9: 20,
    10: 21,
    11: 1,
    12: 2,
    13: 4,
    14: 5,
    15: 7,
    16: 8,
}
FOLLOWERS = {10: 7, 11: 8, 22: 20, 23: 21}  # SMPL foot/hand joint → the mapped joint it follows

LABEL_KEYS = ["global_orient", "body_pose", "betas", "transl"]
INPUT_KEYS = ["keypoints", "K", "image_size"]


def smpl_visibility(keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible (B,24), mapped (B,24)) bool masks of SMPL joints from COCO-17 keypoint confidences."""
    B = keypoints.shape[0]
    vis = torch.zeros(B, 24, dtype=torch.bool, device=keypoints.device)
    mapped = torch.zeros(24, dtype=torch.bool, device=keypoints.device)
    kv = keypoints[..., 2] > 0
    for c, s in COCO_TO_SMPL.items():
        vis[:, s] |= kv[:, c]
        mapped[s] = True
    for s, src in FOLLOWERS.items():
        vis[:, s] = vis[:, src]
        mapped[s] = True
    return vis, mapped.expand(B, 24)


def normalized_keypoints(keypoints: torch.Tensor, K: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """Box-normalised keypoints (B,17,3) as the model sees them (translation/scale invariant)."""
    return condition_from_keypoints(keypoints, K, image_size).keypoints


def nearest_neighbour(query: torch.Tensor, bank: torch.Tensor, miss_penalty: float = 0.25) -> torch.Tensor:
    """Index into ``bank`` (M,17,3) of the nearest normalised keypoints for each query (B,17,3).

    Squared distance over joints visible in both, averaged, plus ``miss_penalty`` times the share of the
    query's visible joints that the bank entry lacks; three matmuls, no loop (vectorised cdist).
    """
    m = (query[..., 2] > 0).float()  # (B,17)
    v = (bank[..., 2] > 0).float()  # (M,17)
    p, q = query[..., :2], bank[..., :2]
    p2 = (p * p).sum(-1) * m
    q2 = (q * q).sum(-1) * v
    cross = torch.einsum("bjc,mjc->bm", p * m[..., None], q * v[..., None])
    num = p2 @ v.T + m @ q2.T - 2 * cross
    both = m @ v.T
    miss = (m.sum(-1, keepdim=True) - both) / m.sum(-1, keepdim=True).clamp_min(1)
    d = num / both.clamp_min(1) + miss_penalty * miss + 1e6 * (both == 0)
    return d.argmin(dim=-1)


def _chunks(B: int, N: int, size: int | None = None) -> list[tuple[slice, slice]]:
    """B groups of N hypotheses as (groups, hypotheses) blocks of at most ``size`` rows (default :data:`CHUNK_ROWS`),
    in row order, each block a contiguous range of the B·N rows: whole groups where a group fits, else one group's
    hypotheses in near-equal parts.

    Near-equal, not ``size`` rows and a remainder: a pass over one or two rows takes other BLAS kernels than one
    over many (the body model's vertices, the network's output differed in the last bits), and a block of 100+
    rows gives every row the bits of one pass over the whole batch, so the figures stay what they were. Whole
    groups keep the metrics' (groups, N) layout of one pass over the batch."""
    size = CHUNK_ROWS if size is None else max(1, int(size))

    def parts(total: int, k: int) -> list[slice]:
        base, extra = divmod(total, k)
        bounds = [0]
        for i in range(k):
            bounds.append(bounds[-1] + base + (i < extra))
        return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    if size >= N:  # whole groups, near-equal counts of them
        return [(g, slice(0, N)) for g in parts(B, max(1, -(-B // max(1, size // max(N, 1)))))]
    return [(slice(b, b + 1), h) for b in range(B) for h in parts(N, -(-N // size))]


def _rows(chunk: tuple[slice, slice], N: int) -> slice:
    """The rows (of the B·N) of a :func:`_chunks` block."""
    g, h = chunk
    return slice(g.start * N + h.start, (g.stop - 1) * N + h.stop)


def sample(model, cond, num_generations: int = 16, steps: int = 10, eta: float = 0.0, generator=None, body=None,
           guidance: float = 0.0) -> HypothesisGroup:
    """:func:`hmrcritic.hmr.diffusion.sample`'s hypotheses with the network and the translation solve run
    :data:`CHUNK_ROWS` rows at a time (bounded memory; ``diffusion.sample`` holds all B·N rows through both).

    The generator draws x_T and each step's ``eta`` noise for all rows, as ``diffusion.sample`` draws them, and the
    keypoint-guidance energy is built per block of rows from the same keypoints, so the hypotheses are the very
    same (``ddim_sample_x0``'s ``row_chunks``). Without a generator, a body model or the inputs' K and pixel
    keypoints (nothing to solve the translation from) it is ``diffusion.sample`` itself."""
    N, gen = num_generations, generator
    if gen is None or body is None or cond.K is None or cond.keypoints_px is None:
        return diffusion_sample(model, cond, num_generations=N, steps=steps, eta=eta, generator=gen, body=body,
                                guidance=guidance)
    chunks = [_rows(c, N) for c in _chunks(len(cond), N)]
    device = model.alphas_cumprod.device
    B = len(cond)
    rows = cond.to(device).repeat_interleave(N)
    x_T = torch.randn(B * N, X_DIM, generator=gen, device=gen.device).to(device)
    energies = None
    if guidance > 0:
        energies = [reprojection_energy(body, rows.keypoints_px[sl], rows.K[sl]) for sl in chunks]
    x0 = ddim_sample_x0(model, rows, steps=steps, eta=eta, generator=gen, x_T=x_T, guide_fn=energies,
                        guidance=guidance, row_chunks=chunks)
    params = x0_to_params(x0)
    transl = []
    for sl in chunks:
        zeros = torch.zeros(sl.stop - sl.start, 3, device=device)
        coco = body.coco17(body(params["global_orient"][sl], params["body_pose"][sl], params["betas"][sl], zeros))
        transl.append(solve_translation(coco, rows.keypoints_px[sl], rows.K[sl]))
    return HypothesisGroup(
        global_orient=params["global_orient"].reshape(B, N, 3),
        body_pose=params["body_pose"].reshape(B, N, 69),
        betas=params["betas"].reshape(B, N, -1),
        transl=torch.cat(transl).reshape(B, N, 3),
        x0=x0.reshape(B, N, X_DIM),
    )


def _verify(scenes, split: str, labels: bool) -> None:
    """The split's shards (and, with ``labels``, wild's labels file) against their manifest's sha256 before they
    are read, as train-base and export check theirs (:func:`hmrcritic.hmr.data.verify_split_files`): a shard
    replaced since generation by one with the rows listed (another generation's copied in) was evaluated — or
    searched as the nearest-neighbour bank — without a word, its figures reported as the split's. Not the images
    (evaluation reads none). The split is named, as the other damage this module finds is."""
    from hmrcritic.hmr.data import verify_split_files

    manifest, folder = getattr(scenes, "manifest", None), getattr(scenes, "folder", None)
    if not isinstance(manifest, dict) or folder is None:  # scenes of a caller's own (no manifest to check against)
        return
    try:
        verify_split_files(manifest, folder, labels=labels, images=False)
    except AssetError as exc:
        raise AssetError(f"split {split!r} is damaged: {exc}") from None


def _load_labelled(split: str, limit: int | None):
    """Inputs + 3D labels of a split as float tensors (``wild``: labels from its separate eval file)."""
    from hmrcritic.hmr.data import _regenerate_command, load_split

    scenes = load_split(split)
    _verify(scenes, split, labels=True)  # wild's labels file is read below, its images are not
    n = len(scenes) if limit is None else min(limit, len(scenes))
    inputs = scenes.arrays(INPUT_KEYS)
    labels = scenes.eval_labels()
    missing = [k for k in LABEL_KEYS if k not in labels]
    if missing:
        raise InputError(f"split {split!r} has no labels {missing} to evaluate against")
    arrays = {**inputs, **{k: labels[k] for k in LABEL_KEYS}}
    # wild's labels file shorter than the manifest says would misalign inputs and labels (shards are checked
    # against it by SceneSet)
    short = {k: len(v) for k, v in arrays.items() if len(v) != len(scenes)}
    if short:
        # the command that remakes this split (its --n, --seed, --render): the bare --split made a default one
        raise AssetError(f"split {split!r} in {scenes.folder} is damaged: its manifest lists {len(scenes)} scenes "
                         f"but {', '.join(f'{k} has {m}' for k, m in short.items())}; regenerate it "
                         f"(`{_regenerate_command(scenes.manifest)}`)")
    return {k: torch.as_tensor(np.asarray(v)[:n], dtype=torch.float32) for k, v in arrays.items()}, n


def _not_default_split_notes(split: str, nn_baseline: bool) -> list[str]:
    """A line for each split the figures come from that is not the default one (the held-out split evaluated, and
    the train split when it is the nearest-neighbour baseline's bank).

    A split generated earlier with another ``--n`` or ``--seed`` (a quick test) is what ``load_split`` hands on:
    its scenes are other scenes (a split's cameras are drawn for all its n at once, so even its first K differ), and
    ``evaluate`` reported figures that compare with no published one without a word (train-base says so of its
    training split in the same words)."""
    from hmrcritic.hmr.data import SPLITS, default_size, load_split

    notes = []
    for name, what in ((split, "these figures are measured on them, so they compare with no figures on the "
                               "default split"),
                       *((("train", "the nearest-neighbour baseline searches them"),) if nn_baseline else ())):
        if name not in SPLITS:
            continue
        try:
            manifest = load_split(name, generate=False, quiet=True).manifest
        except (AssetError, InputError):  # advisory: the figures are already measured
            continue
        size, seed = default_size(name), SPLITS[name][1]
        have_n, have_seed = manifest.get("n", size), manifest.get("seed", seed)
        if have_n != size or have_seed != seed:
            notes.append(f"the {name} split in the data folder has {have_n} scenes of seed {have_seed}, not the "
                         f"default {size} of seed {seed}: {what} (`hmrcritic data generate --split {name}` makes "
                         "the default split)")
    return notes


def _nn_bank():
    """The training set's normalised keypoints and its SMPL parameters (the NN baseline's bank; the caller
    poses the body)."""
    from hmrcritic.hmr.data import load_split

    tr = load_split("train")
    _verify(tr, "train", labels=False)
    a = tr.arrays(INPUT_KEYS + ["global_orient", "body_pose", "betas"])
    a = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in a.items()}
    size = a["image_size"].reshape(-1, 2).expand(a["keypoints"].shape[0], 2)
    bank = normalized_keypoints(a["keypoints"], a["K"], size)
    return bank, a


@torch.no_grad()
@keywords_checked
def evaluate_model(
    model: HMRDiffusion | str | os.PathLike | None,
    split: str = "test",
    num_generations: int = 16,
    steps: int = 10,
    eta: float = 0.0,
    limit: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    joint_set: str = "lsp14",
    select_fn: Callable[[dict], torch.Tensor] | None = None,
    nn_baseline: bool = True,
    body=None,
    progress: Callable[[int, int], None] | None = None,
    guidance: float = 0.0,
    notify: Callable[[str], None] | None = None,
    data: str | os.PathLike | None = None,
) -> dict:
    """Evaluate ``model`` on ``split`` — or on a labelled ``.npz`` of one's own (``data``: the format is
    :mod:`hmrcritic.hmr.userdata`'s; the figures' ``split`` is then its path); returns a flat dict of figures (see
    module docstring).

    Deterministic for a given (model, split, limit, num_generations, steps, eta, batch_size, seed); the
    hypotheses go through the network, the body model and the metrics :data:`CHUNK_ROWS` rows at a time, which
    bounds the memory and leaves every figure as one pass over the batch gives it. ``notify`` takes one-line notes
    (a split in the data folder that is not the default one) before the work starts.
    """
    from hmrcritic.hmr import metrics as M
    from hmrcritic.hmr.anatomy import is_implausible
    from hmrcritic.hmr.body import load_body_model

    # a checkpoint path, as `hmrcritic evaluate --model` takes one (it was "'str' object has no attribute
    # 'num_timesteps'"), or None: the shipped base model, as the command without --model
    if model is None or isinstance(model, str | os.PathLike):
        from hmrcritic.hmr.diffusion import load_model

        model = load_model(model)
    elif not (isinstance(getattr(model, "alphas_cumprod", None), torch.Tensor) and callable(
            getattr(model, "predict_eps", None))):
        raise InputError(f"model must be an HMRDiffusion, a checkpoint path or None (the shipped base model), got "
                         f"{type(model).__name__}")
    check_sampling_args(num_generations, steps, eta, guidance, model.num_timesteps)  # before any split is loaded
    # as the sampler's arguments: limit=2.5 or a seed of 1.5 failed after the splits had loaded, as a bare
    # "slice indices must be integers" or "manual_seed expected a long"
    for name, value in (("--limit", limit), ("--batch-size", batch_size), ("--seed", seed)):
        if value is not None or name != "--limit":
            check_number(name, value, integer=True)
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be ≥ 1 scene (or left out for the whole split), got {limit}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be ≥ 1, got {batch_size}")
    # before the splits are loaded (the NN bank may generate the 20k-scene train split): an unknown name was a bare
    # ValueError from the metrics after the first batch had been sampled
    from hmrcritic.hmr.body import JOINT_SETS

    if joint_set is not None and joint_set not in JOINT_SETS:  # None: the 24 joints as given (metrics.mpjpe)
        raise InputError(f"joint set must be one of {', '.join(JOINT_SETS)}, got {joint_set!r}")
    device = model.alphas_cumprod.device
    body = body or load_body_model(device=str(device))
    if data is not None:
        from hmrcritic.hmr.userdata import read_labelled

        arrays, n = read_labelled(data, limit)
        split = str(data)  # what the figures were measured on, in the result and its report
        data = {k: torch.from_numpy(v) for k, v in arrays.items()}
        if notify is not None and body.name == "mannequin":
            notify("the labels are posed with the built-in mannequin body model: SMPL labels of a real dataset "
                   "need HMRCRITIC_BODY_MODEL set to the SMPL file they were made with (hmrcritic body convert)")
    else:
        data, n = _load_labelled(split, limit)
    if n == 0:
        raise InputError(f"split {split!r} is empty")
    sizes = data["image_size"].reshape(-1, 2).expand(n, 2)
    bank = bank_arr = None
    if nn_baseline:
        bank, bank_arr = _nn_bank()
    if notify is not None:
        for note in _not_default_split_notes(split, nn_baseline):
            notify(note)
        extra = getattr(model, "checkpoint_extra", None)
        if isinstance(extra, dict) and extra.get("data_split") == split:
            # finetune records the split of its dataset: an export of the test split finetuned and then evaluated
            # on it gave figures of groups the model was aligned on, with no word anywhere
            notify(f"this model was aligned on groups of the {split} split (its checkpoint's data_split): its "
                   f"{split} figures are not held out")

    acc: dict[str, list[torch.Tensor]] = {}

    def add(name, value):
        acc.setdefault(name, []).append(value.detach().float().cpu().reshape(-1))

    N = num_generations
    per_joint, vis_masks, occ_masks = [], [], []
    t0 = time.time()
    # the caller's mode back afterwards: a model evaluated in the middle of its training (dropout on) was left in
    # eval mode, and trained on without its dropout
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            kp, K, size = data["keypoints"][sl].to(device), data["K"][sl].to(device), sizes[sl].to(device)
            B = kp.shape[0]
            cond = condition_from_keypoints(kp, K, size)
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
            group = sample(
                model, cond, num_generations=N, steps=steps, eta=eta, generator=gen, body=body, guidance=guidance
            )
            flat = group.flat()
            gt = body(
                data["global_orient"][sl].to(device),
                data["body_pose"][sl].to(device),
                data["betas"][sl].to(device),
                data["transl"][sl].to(device),
            )
            # the hypotheses' bodies and their errors a block of rows at a time, in the (groups, N) layout of one pass
            # over the batch (each row's values are that pass's); the vertices are kept only for a select_fn's context
            rows: dict[str, list[torch.Tensor]] = {}
            for gs, hs in _chunks(B, N):
                ch = _rows((gs, hs), N)
                g, h = gs.stop - gs.start, hs.stop - hs.start
                out = body(flat["global_orient"][ch], flat["body_pose"][ch], flat["betas"][ch], flat["transl"][ch])
                hj, hv = out.joints.reshape(g, h, 24, 3), out.vertices.reshape(g, h, -1, 3)
                gj, gv = gt.joints[gs, None], gt.vertices[gs, None]
                coco = body.coco17(out)
                proj = _project(coco, K[gs].repeat_interleave(h, 0)).reshape(g, h, 17, 2)
                # a visible keypoint's joint at or behind the camera: its reprojection error is not a distance
                behind = (coco[..., 2].reshape(g, h, 17) <= 0) & (kp[gs, None, :, 2] > 0)
                for name, v in (
                    ("joints", out.joints),
                    ("mpjpe", M.mpjpe(hj, gj, joint_set)),
                    ("pa_mpjpe", M.pa_mpjpe(hj, gj, joint_set)),
                    ("pve", M.pve(hv, gv, hj[..., 0, :], gj[..., 0, :])),
                    ("reproj", M.reprojection_error(proj, kp[gs, None].expand(g, h, 17, 3))),
                    ("behind", behind.any(-1)),
                    ("implausible", is_implausible(flat["body_pose"][ch], out.joints)),
                    *((("vertices", out.vertices),) if select_fn is not None else ()),
                ):
                    rows.setdefault(name, []).append(v.reshape(g * h, *v.shape[2:]) if v.shape[:2] == (g, h) else v)
                del out, hv, gv, coco, proj
            joints = torch.cat(rows["joints"]).reshape(B, N, 24, 3)
            verts = torch.cat(rows["vertices"]).reshape(B, N, -1, 3) if select_fn is not None else None
            e_mpjpe, e_pa, e_pve, e_rep = (torch.cat(rows[k]).reshape(B, N)
                                           for k in ("mpjpe", "pa_mpjpe", "pve", "reproj"))
            add("reproj_behind", torch.cat(rows["behind"]).float())
            for name, e in (("mpjpe", e_mpjpe), ("pa_mpjpe", e_pa), ("pve", e_pve), ("reproj", e_rep)):
                g = M.group_metrics(e, reduce=False)
                add(f"{name}_mean", g["mean"])
                add(f"{name}_best", g["best"])
                add(f"{name}_median", g["median"])
            # mean pose: average x0 over the group (6D re-orthonormalised); no translation: every metric below is
            # root- or Procrustes-aligned
            mp = x0_to_params(group.x0.mean(1))
            mo = body(mp["global_orient"], mp["body_pose"], mp["betas"], None)
            add("mpjpe_meanpose", M.mpjpe(mo.joints, gt.joints, joint_set))
            add("pa_mpjpe_meanpose", M.pa_mpjpe(mo.joints, gt.joints, joint_set))
            add("pve_meanpose", M.pve(mo.vertices, gt.vertices, mo.joints[:, 0], gt.joints[:, 0]))
            add("implausible", torch.cat(rows.pop("implausible")).float())
            vis, mapped = smpl_visibility(kp)
            # one hypothesis has no spread: left out (None), not NaN per scene, which non_finite_dropped then
            # counted and the report blamed on scenes without occluded or visible joints
            if N > 1:
                add("div_visible", M.mean_pairwise_distance(joints, vis & mapped, root_relative=True))
                add("div_occluded", M.mean_pairwise_distance(joints, ~vis & mapped, root_relative=True))
                add("div_all", M.mean_pairwise_distance(joints, None, root_relative=True))
                # the same after similarity-aligning every hypothesis to the group mean: articulation only
                aligned = M.procrustes_align(joints, joints.mean(1, keepdim=True))
                add("div_visible_pa", M.mean_pairwise_distance(aligned, vis & mapped))
                add("div_occluded_pa", M.mean_pairwise_distance(aligned, ~vis & mapped))
                # per-joint spread (B,24) for the joint-balanced comparison (same joint visible vs occluded)
                pair = torch.cat([_pair_spread(aligned[b : b + 1]) for b in range(B)]) * 1000.0
                per_joint.append((pair / (N * (N - 1))).cpu())
                vis_masks.append((vis & mapped).cpu())
                occ_masks.append((~vis & mapped).cpu())
            if select_fn is not None:
                ctx = {
                    "group": group,
                    "keypoints": kp,
                    "K": K,
                    "image_size": size,
                    "joints": joints,
                    "vertices": verts,
                    "faces": body.faces,
                    "indices": torch.arange(sl.start, sl.stop),
                    "split": split,
                    "cond": cond,
                }
                choice = torch.as_tensor(select_fn(ctx), device=e_pa.device)
                if tuple(choice.shape) not in ((B, N), (B,)):
                    raise ValueError(f"select_fn must return scores ({B},{N}) or indices ({B},), got "
                                     f"{tuple(choice.shape)}")
                unpicked = torch.zeros(B, dtype=torch.bool, device=e_pa.device)
                if choice.ndim == 2:  # scores: a NaN never wins
                    idx = M.top1_index(choice).to(e_pa.device)
                    # a group scored all NaN (the critic failed on it) has no pick: argmax over all −inf gave index 0,
                    # the sampler's first hypothesis reported as the critic's; NaN instead, left out and counted
                    unpicked = torch.isnan(choice.to(torch.float64)).all(dim=-1).to(e_pa.device)
                else:
                    idx = choice.long()
                    if ((idx < 0) | (idx >= N)).any():
                        raise ValueError(f"select_fn chose hypothesis indices outside 0..{N - 1}: {idx.tolist()}")
                for name, e in (("pa_mpjpe", e_pa), ("mpjpe", e_mpjpe), ("pve", e_pve)):
                    picked = e.gather(1, idx[:, None]).squeeze(1)
                    add(f"{name}_selected", torch.where(unpicked, torch.full_like(picked, float("nan")), picked))
            if bank is not None:
                nn_idx = nearest_neighbour(normalized_keypoints(kp, K, size).cpu(), bank)
                no = body(*(bank_arr[k][nn_idx].to(device) for k in ("global_orient", "body_pose", "betas")), None)
                add("nn_pa_mpjpe", M.pa_mpjpe(no.joints, gt.joints, joint_set))
                add("nn_mpjpe", M.mpjpe(no.joints, gt.joints, joint_set))
            if progress:
                progress(sl.stop, n)
    finally:
        if was_training:
            model.train()
    elapsed = time.time() - t0

    dropped: dict[str, int] = {}  # result key → non-finite values its mean left out

    def mean(key, name):
        if name not in acc:
            return None
        v = torch.cat(acc[name])
        finite = torch.isfinite(v)
        if int((~finite).sum()):
            dropped[key] = int((~finite).sum())
        v = v[finite]
        return round(float(v.mean()), 3) if v.numel() else None

    bal_vis = bal_occ = None
    if N > 1:
        d, mv, mo = torch.cat(per_joint), torch.cat(vis_masks).float(), torch.cat(occ_masks).float()
        # a scene with a non-finite hypothesis has an all-NaN spread row, and NaN × a 0 mask is still NaN: one
        # such scene made both balanced figures NaN for the whole split; left out and counted like the others
        ok = torch.isfinite(d).all(dim=-1)
        if not bool(ok.all()):
            for key in ("diversity_visible_balanced_mm", "diversity_occluded_balanced_mm"):
                dropped[key] = int((~ok).sum())
            d, mv, mo = d[ok], mv[ok], mo[ok]
        both = (mv.sum(0) > 0) & (mo.sum(0) > 0)  # joints seen both visible and occluded somewhere
        if both.any():
            bal_vis = round(float(((d * mv).sum(0) / mv.sum(0).clamp_min(1))[both].mean()), 3)
            bal_occ = round(float(((d * mo).sum(0) / mo.sum(0).clamp_min(1))[both].mean()), 3)
    res = {
        "split": split,
        "n_samples": n,
        "num_generations": N,
        "steps": steps,
        "eta": eta,
        "seed": seed,
        "guidance": guidance,
        "joint_set": joint_set,
        # the body the figures are measured on (PVE averages its vertices) and, where the checkpoint records it,
        # the one its training scenes were made with: a model trained on the mannequin's scenes and evaluated
        # with HMRCRITIC_BODY_MODEL set reported figures that said neither
        "body_model": getattr(body, "name", None),
        "trained_body_model": trained_body_model(model, body),
        "unit": "mm (3D), px (2D)",
        **{key: mean(key, name) for key, name in _FIGURES.items()},
        "diversity_visible_balanced_mm": bal_vis,
        "diversity_occluded_balanced_mm": bal_occ,
        "diversity_joint_set": "smpl24 joints with a COCO-17 counterpart, root-relative",
        "alignment": {
            "mpjpe": "mid-hip (lsp14) / pelvis (smpl24)",
            "pa_mpjpe": "procrustes",
            "pve": "pelvis",
            "reproj": "none",
        },
        "seconds": round(elapsed, 2),
        "hypotheses_per_s": round(n * N / max(elapsed, 1e-9), 1),
        "model": getattr(model, "checkpoint_path", None),
    }
    if select_fn is not None:
        res.update({key: mean(key, name) for key, name in _SELECTED_FIGURES.items()})
    # the means leave non-finite values out (a failed Procrustes fit, a scene with no occluded joint for the
    # occluded diversity): without this a mean over fewer scenes than n_samples read as one over all of them.
    # Values are per scene, per hypothesis for the two rates (_PER_HYPOTHESIS); {} when nothing was left out.
    res["non_finite_dropped"] = dropped
    return res


# result key → accumulator name, in the order of the result dict
_FIGURES = {
    "mpjpe_mean_mm": "mpjpe_mean",
    "mpjpe_best_mm": "mpjpe_best",
    "mpjpe_meanpose_mm": "mpjpe_meanpose",
    "pa_mpjpe_mean_mm": "pa_mpjpe_mean",
    "pa_mpjpe_best_mm": "pa_mpjpe_best",
    "pa_mpjpe_meanpose_mm": "pa_mpjpe_meanpose",
    "pve_mean_mm": "pve_mean",
    "pve_best_mm": "pve_best",
    "pve_meanpose_mm": "pve_meanpose",
    "reproj_px": "reproj_median",
    "reproj_mean_px": "reproj_mean",
    "reproj_best_px": "reproj_best",
    "reproj_behind_camera_rate": "reproj_behind",
    "implausible_rate": "implausible",
    "nn_baseline_pa_mpjpe_mm": "nn_pa_mpjpe",
    "nn_baseline_mpjpe_mm": "nn_mpjpe",
    "diversity_visible_mm": "div_visible",
    "diversity_occluded_mm": "div_occluded",
    "diversity_all_mm": "div_all",
    "diversity_visible_aligned_mm": "div_visible_pa",
    "diversity_occluded_aligned_mm": "div_occluded_pa",
}
_SELECTED_FIGURES = {
    "pa_mpjpe_selected_mm": "pa_mpjpe_selected",
    "mpjpe_selected_mm": "mpjpe_selected",
    "pve_selected_mm": "pve_selected",
}
_PER_HYPOTHESIS = ("reproj_behind_camera_rate", "implausible_rate")  # one value per hypothesis, not per scene


# The body model the shipped base checkpoint (hmrcritic/assets/base_model.pt) was trained on. Its `extra["data"]`
# was written before train-base recorded `body_model`, and the file is a published, bitwise-reproduced asset (README:
# sha256 f09f3081…6ac9) that is not rewritten to add it; `train-base --seed 0 --ship` on the mannequin made it.
SHIPPED_BODY_MODEL = "mannequin"


def _is_shipped_checkpoint(model) -> bool:
    """Whether ``model`` was loaded from the shipped base checkpoint, judged by content: the file's sha256 against the
    one ``base_model.json`` records for it (a copy of it elsewhere is the same model; another file at the assets path,
    after a ``train-base --ship``, has its own record of its body)."""
    import json

    from hmrcritic.hmr.diffusion import ASSETS_DIR
    from hmrcritic.io import sha256_file

    path = getattr(model, "checkpoint_path", None)
    if not isinstance(path, str | os.PathLike) or not os.path.isfile(path):
        return False
    try:
        meta = json.loads((ASSETS_DIR / "base_model.json").read_text(encoding="utf-8"))
        want = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(want, str) or os.path.getsize(path) != meta.get("bytes", os.path.getsize(path)):
            return False
        return sha256_file(path) == want
    except (OSError, ValueError):  # advisory: no note rather than a failed command
        return False


def trained_body_model(model, body=None) -> str | None:
    """The body model of the scenes ``model`` was trained on, as its checkpoint records it (None: not recorded).

    By the file's content where the checkpoint and ``body`` both know it (``data.body_sha256``, as ``load_split``
    judges a split): by the path alone, the same SMPL file named by another path (relative when training, absolute
    now) got the report's note that the figures measure the model on another body, and another file at the same
    path (neutral replaced by male) got none. The same file is named as ``body`` is; another one at its path says
    so."""
    extra = getattr(model, "checkpoint_extra", None)
    data = extra.get("data") if isinstance(extra, dict) else None
    name = data.get("body_model") if isinstance(data, dict) else None
    if not isinstance(name, str):
        # the shipped checkpoint predates that record: the user who set HMRCRITIC_BODY_MODEL to their SMPL file got
        # no note from sample or evaluate that the shipped model was trained on another body (the mannequin)
        return SHIPPED_BODY_MODEL if _is_shipped_checkpoint(model) else None
    sha, now = data.get("body_sha256"), getattr(body, "source_sha256", None)
    if isinstance(sha, str) and isinstance(now, str):
        if sha == now:
            return getattr(body, "name", name)
        if name == getattr(body, "name", None):
            return f"{name} (another file at that path then, sha256 {sha[:12]}…)"
    return name


def _pair_spread(joints: torch.Tensor) -> torch.Tensor:
    """Sum over all ordered hypothesis pairs of the distance of each joint, ``(B,N,J,3)`` → ``(B,J)``.

    The (B,N,N,J,3) differences of all pairs at once were 288·B·N² bytes (2.4 GB for 32 groups of 512); called one
    group at a time and built a block of first hypotheses at a time, it holds one group's (N,N,J) distances. The sum
    stays one reduction over them (a sum of per-block sums adds in another order and changes the last bits)."""
    from hmrcritic.hmr.metrics import PAIR_CHUNK_ELEMS

    B, N, J, _ = joints.shape
    step = max(1, PAIR_CHUNK_ELEMS // max(B * N * J, 1))
    d = joints.new_empty(B, N, N, J)
    for s in range(0, N, step):
        d[:, s : s + step] = (joints[:, s : s + step].unsqueeze(2) - joints.unsqueeze(1)).norm(dim=-1)
    return d.sum(dim=(1, 2))


def _project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points (B,J,3) with K (B,3,3) → pixels (B,J,2)."""
    uvw = points @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-6)


def _left_out_why(key: str) -> str:
    """Why the mean ``key`` leaves a scene out (the ways :func:`evaluate_model` gets a non-finite value for it)."""
    if key.startswith(("diversity_visible", "diversity_occluded")) and "balanced" not in key:
        seen = "visible" if key.startswith("diversity_visible") else "occluded"
        return f"no {seen} joint in the scene, so no such diversity, or a non-finite hypothesis"
    if key.startswith("diversity_"):
        return "a non-finite hypothesis"
    if key.endswith("_selected_mm"):
        return "the critic scored none of the group's hypotheses, or the one it picked has no finite error"
    return "no finite value: a non-finite hypothesis, or a failed Procrustes fit"


def format_report(res: dict) -> str:
    """Human-readable table of an evaluation dict."""
    f = lambda v: "—" if v is None else f"{v:8.1f}"  # noqa: E731
    rate = "—" if res["implausible_rate"] is None else f"{res['implausible_rate']:.3f}"
    body, trained = res.get("body_model"), res.get("trained_body_model")  # .get: results from before they existed
    lines = [
        f"split={res['split']}  n={res['n_samples']}  N={res['num_generations']}  DDIM steps={res['steps']}  "
        f"joint set={res['joint_set']}" + (f"  body={body}" if body else "") + "  (mm; reprojection px)",
        *([f"note: the model was trained on scenes of body model {trained}, not {body}: these figures measure it on "
           "another body"] if body and trained and trained != body else []),
        f"{'':14}{'mean':>9}{'best-of-N':>10}{'mean-pose':>10}",
        *(
            f"{label:14}{f(res[key + '_mean_mm'])} {f(res[key + '_best_mm'])} {f(res[key + '_meanpose_mm'])}"
            for label, key in (("MPJPE", "mpjpe"), ("PA-MPJPE", "pa_mpjpe"), ("PVE", "pve"))
        ),
        # the group *median* under the "mean" column would read as a mean (the mean is in --json as
        # reproj_mean_px, swamped by hypotheses far off the image), so the row says what it shows
        f"{'reproj med px':14}{f(res['reproj_px'])} {f(res['reproj_best_px'])}   (median over the group / best)",
        # the reason a reprojection mean can read in millions of px; no line where there is none
        *([f"  {res['reproj_behind_camera_rate']:.3f} of hypotheses put a visible keypoint's joint at or behind "
           "the camera (reprojection undefined; they swamp reproj_mean_px)"]
          if res.get("reproj_behind_camera_rate") else []),
        f"NN baseline PA-MPJPE {f(res['nn_baseline_pa_mpjpe_mm'])} mm   implausible rate {rate}",
        f"diversity visible {f(res['diversity_visible_mm'])} mm   "
        f"occluded {f(res['diversity_occluded_mm'])} mm"
        f"   ({res['diversity_joint_set']})",
        f"  aligned to group mean: visible {f(res.get('diversity_visible_aligned_mm'))} mm   "
        f"occluded {f(res.get('diversity_occluded_aligned_mm'))} mm",
        f"  joint-balanced (aligned): visible {f(res.get('diversity_visible_balanced_mm'))} mm   "
        f"occluded {f(res.get('diversity_occluded_balanced_mm'))} mm",
    ]
    if res.get("pa_mpjpe_selected_mm") is not None:
        lines.append(f"selected top-1 PA-MPJPE {f(res['pa_mpjpe_selected_mm'])} mm")
    dropped = res.get("non_finite_dropped") or {}  # .get: a result written before the field existed
    if dropped:
        # the counts are what each mean LEFT OUT: "…, so they are over fewer than n: diversity_occluded_mm 4 of 20
        # scenes" read as a mean over 4 scenes (it was over the other 16), and the one reason given, scenes without
        # occluded or visible joints, read as every listed figure's
        n, N = res["n_samples"], res["num_generations"]
        parts = []
        for k, v in dropped.items():
            total, unit = (n * N, "hypotheses") if k in _PER_HYPOTHESIS else (n, "scenes")
            parts.append(f"{k} {v} of {total} {unit} left out ({_left_out_why(k)}), its mean over the other "
                         f"{total - v}")
        lines.append("note: these means leave out non-finite values: " + "; ".join(parts))
    lines.append(f"{res['hypotheses_per_s']} hypotheses/s, {res['seconds']} s")
    return "\n".join(lines)
