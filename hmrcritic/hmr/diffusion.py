"""The diffusion HMR model: a compact conditional denoiser over SMPL parameters, DDPM-trained, DDIM-sampled.

What is diffused: ``x0 = [6D rotations of the 24 SMPL joints (global orientation first), 10 betas]``
(154 numbers). The camera is *not* diffused: for every sampled body the translation that best explains
the 2D keypoints is solved in closed form (weighted linear least squares), so each hypothesis can be
rendered over its image. This departs from the paper's base model (ScoreHypo diffuses joint positions
and twists from image features); we condition on 2D keypoints only because no image backbone ships
offline (see PAPER.md §6).

Denoiser: one small transformer over 25 state tokens (24 joint-rotation tokens + 1 shape token), 17
keypoint tokens (box-normalised position, confidence, visibility), one box token and one timestep token.
Keypoints are normalised to the person box, so the pose evidence is translation/scale invariant; the box
token carries what that normalisation throws away and what the camera-frame ``global_orient`` depends on:
the ray direction of the box centre and the box size relative to the focal length (perspective).

The network works in a standardised space: ``q_sample`` and ``predict_eps`` see ``(x0 - mean) / std``
with per-dimension statistics fitted on the training set and stored as buffers in the checkpoint. Every
public function takes and returns *raw* ``x0``; ``x_t`` and ``eps`` live in the standardised space, so
``d = ||eps - predict_eps(q_sample(x0, t, eps), t, c)||²`` (the GPA/DPO implicit reward) is consistent.

Training objective: the DDPM denoising MSE on a 1000-step linear-β schedule (as the paper), eps-weighted by
default and v-weighted (``||v̂ − v||²`` = eps-MSE / ᾱ_t) in the shipped base recipe (``TrainConfig.loss_weighting``);
sampler: DDIM with configurable steps and η (η = 0 deterministic, as the paper).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hmrcritic.errors import AssetError, InputError, check_number, keywords_checked
from hmrcritic.hmr.rotations import axis_angle_to_rot6d, rot6d_to_axis_angle

NUM_JOINTS = 24
NUM_BETAS = 10
NUM_KEYPOINTS = 17
X_DIM = NUM_JOINTS * 6 + NUM_BETAS
# Hypotheses per input: the paper samples 16–32; 1024 is far beyond any use and still fits in memory
# (a group costs about 0.5 MB per hypothesis through sampling, evidence and critique).
MAX_GENERATIONS = 1024
CHECKPOINT_FORMAT = "hmrcritic-diffusion"
CHECKPOINT_VERSION = 1
BOX_PAD = 1.2  # the person box is the visible-keypoint extent, padded by 20 % on its longer side

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS_DIR / "base_model.pt"


# ----------------------------------------------------------------------------------------------- config
@dataclass
class DiffusionConfig:
    """Architecture and noise schedule. Everything here is saved in the checkpoint and checked on load."""

    d_model: int = 128
    layers: int = 3
    heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.0
    T: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    std_floor: float = 0.05  # floor for the per-dimension std of x0 (joints that barely move in the data)
    # A global condition vector (MLP over all keypoint + box features) added to every state token, beside the
    # keypoint tokens: without this direct path the first base run learned to ignore the keypoints entirely
    # (its loss was the same with shuffled conditions after 1000 steps).
    global_cond: bool = True
    # What the network outputs: "v" (Salimans & Ho 2022: v = sqrt(ᾱ)·eps − sqrt(1−ᾱ)·x0, eps-like at low noise,
    # x0-like at high noise) or "eps". ``predict_eps`` always returns eps, so callers never see the difference.
    # With "eps" the condition barely moves the loss (only mid-noise steps depend on it) and two CPU-budget
    # runs ignored the keypoints entirely; with "v" high-noise steps are a direct keypoints → pose regression.
    prediction: str = "v"

    def __post_init__(self) -> None:
        # numpy / torch scalars (a sweep's np.linspace of β, a T from an array) as the plain numbers they hold: the
        # config is saved in every checkpoint, which is read back weights-only, and a numpy scalar there made the
        # finished model.pt unwritable (save_model refused it after the whole run). Plain values are kept as given.
        for f in fields(self):
            setattr(self, f.name, plain_number(getattr(self, f.name)))

    def validate(self) -> None:
        """Refuse (ValueError) a config no usable model has; :class:`HMRDiffusion` and ``TrainConfig`` call it.

        The noise schedule is checked too: a β outside (0, 1) made some ᾱ_t negative (NaN after the square root), and
        train-base then stopped with "the training data gives it (non-finite image sizes or intrinsics?)"; T = 0
        failed at the first step as a bare "random_ expects 'from' to be less than 'to'"; a std floor of 0 divides a
        constant dimension of the data by zero. Valid configs are untouched (nothing is computed here)."""
        for name in ("d_model", "heads", "ff_mult"):  # heads=0 was a bare ZeroDivisionError below
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        d = self.d_model
        if d % self.heads:
            raise ValueError(f"d_model {d} must be divisible by heads {self.heads}")
        if d % 2:  # the timestep embedding is d/2 cosines + d/2 sines: an odd d failed at the first forward pass
            raise ValueError(f"d_model {d} must be even (sin/cos timestep embedding)")
        if self.prediction not in ("v", "eps"):
            raise ValueError(f"unknown prediction {self.prediction!r} (v or eps)")
        if self.beta_schedule != "linear":
            raise ValueError(f"unknown beta schedule {self.beta_schedule!r} (only 'linear')")
        if isinstance(self.T, bool) or not isinstance(self.T, numbers.Integral) or self.T < 1:
            raise ValueError(f"T (diffusion steps) must be an integer ≥ 1, got {self.T!r}")
        for name in ("beta_start", "beta_end", "std_floor"):
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
            if not ok or (name != "std_floor" and value >= 1):
                what = "in (0, 1)" if name != "std_floor" else "a finite number > 0"
                raise ValueError(f"{name} must be {what}, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DiffusionConfig fields {sorted(unknown)}")
        return cls(**d)


def plain_number(value: Any) -> Any:
    """A numpy scalar or a 0-d torch tensor as the Python number it holds; anything else unchanged.

    For configs that are saved in checkpoints and training states, which are loaded weights-only (a numpy scalar
    there is refused on load)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex():
        return value.item()
    if isinstance(value, numbers.Number) and type(value) not in (int, float, bool, complex) and hasattr(value, "item"):
        return value.item()
    return value


# -------------------------------------------------------------------------------------------- condition
@dataclass
class Condition:
    """What the denoiser sees about one input (batched over B).

    ``keypoints``: (B,17,3) COCO-17 positions normalised to the person box (about [-1, 1]) and confidence
    (0 = missing). ``box``: (B,4) = (ray x, ray y) of the box centre ((c - principal point) / focal),
    box size / focal, share of visible keypoints. ``keypoints_px`` and ``K`` are kept (not fed to the
    network) so the sampler can solve each hypothesis's camera translation.
    """

    keypoints: torch.Tensor
    box: torch.Tensor
    keypoints_px: torch.Tensor | None = None
    K: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def to(self, device: str | torch.device) -> Condition:
        return Condition(*[None if v is None else v.to(device) for v in self._values()])

    def index(self, idx: Any) -> Condition:
        return Condition(*[None if v is None else v[idx] for v in self._values()])

    def repeat_interleave(self, n: int) -> Condition:
        """Each input repeated n times in a row: rows b*n .. b*n+n-1 belong to input b (B·N batching)."""
        return Condition(*[None if v is None else v.repeat_interleave(n, dim=0) for v in self._values()])

    def _values(self) -> list[torch.Tensor | None]:
        return [self.keypoints, self.box, self.keypoints_px, self.K]


def person_box(keypoints: torch.Tensor, image_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (B,2) and side length (B,) of the square person box around the visible keypoints.

    With at most one visible keypoint the box is centred on it (on the image centre with none) and is a quarter
    of the image's longer side.
    """
    vis = keypoints[..., 2] > 0
    uv = keypoints[..., :2]
    big = torch.finfo(uv.dtype).max
    lo = torch.where(vis[..., None], uv, torch.full_like(uv, big)).amin(dim=-2)
    hi = torch.where(vis[..., None], uv, torch.full_like(uv, -big)).amax(dim=-2)
    any_vis = vis.any(dim=-1)
    wh = image_size.to(uv.dtype).expand(uv.shape[0], 2)
    centre = torch.where(any_vis[:, None], (lo + hi) / 2, wh / 2)
    extent = torch.where(any_vis, (hi - lo).amax(dim=-1), wh.amax(dim=-1) / BOX_PAD)
    size = torch.where(vis.sum(-1) <= 1, wh.amax(dim=-1) / 4, extent * BOX_PAD).clamp_min(1.0)
    return centre, size


def _as_float_tensor(name: str, value: Any, expected: str, device: torch.device | None = None) -> torch.Tensor:
    """``value`` as a float32 tensor, or one :class:`InputError` naming ``name`` when it is not numbers (a bare
    TypeError/ValueError from torch otherwise)."""
    try:
        return torch.as_tensor(value, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{name} must be {expected}, got {type(value).__name__}") from None


@keywords_checked
def condition_from_keypoints(
    keypoints: torch.Tensor, K: torch.Tensor, image_size: torch.Tensor | tuple[int, int] | None = None
) -> Condition:
    """Build the model condition from pixel keypoints (B,17,3) [u, v, conf], intrinsics (B,3,3) and (W,H).

    Keypoints outside the image are treated as missing (conf 0): a detector cannot see them either.
    An argument that is not numbers (``image_size="256x256"``) is refused as :class:`InputError`.
    """
    keypoints = _as_float_tensor("keypoints", keypoints, "(B,17,3) numbers [u, v, conf]")
    K = _as_float_tensor("K", K, "(B,3,3) or (3,3) intrinsics", keypoints.device)
    if keypoints.ndim == 2:
        keypoints = keypoints[None]
    if K.ndim == 2:
        K = K[None].expand(keypoints.shape[0], 3, 3)
    if keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise InputError(f"keypoints must have shape (B,17,3) [u, v, conf], got {tuple(keypoints.shape)}")
    if K.shape != (keypoints.shape[0], 3, 3):
        raise InputError(f"K must have shape (B,3,3) matching keypoints, got {tuple(K.shape)}")
    # a focal length of 0 (or one of them negative) or a NaN in K made the box feature inf/NaN: every hypothesis
    # came out NaN, and sample_to_dir then blamed the checkpoint
    bad = ~(torch.isfinite(K).flatten(1).all(-1) & (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0))
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise InputError(f"K must be finite intrinsics with focal lengths fx, fy > 0 (pixels); input {b} has "
                         f"{[[round(float(x), 3) for x in row] for row in K[b]]}")
    if image_size is None:
        image_size = 2 * K[:, :2, 2]  # principal point at the image centre
    image_size = _as_float_tensor("image_size", image_size, "(W, H) numbers, one pair or one per input",
                                  keypoints.device)
    if image_size.numel() % 2 or image_size.numel() // 2 not in (1, keypoints.shape[0]):
        raise InputError(f"image_size must be (W, H) numbers, one pair or one per input, got shape "
                         f"{tuple(image_size.shape)}")
    image_size = image_size.reshape(-1, 2)
    # a NaN confidence is a missing point too: clamp keeps NaN, which reached the network and turned every
    # hypothesis NaN (sample_to_dir then blamed the checkpoint)
    conf = torch.nan_to_num(keypoints[..., 2], nan=0.0).clamp(0, 1)
    uv = keypoints[..., :2]
    inside = (uv >= 0).all(-1) & (uv[..., 0] <= image_size[:, None, 0]) & (uv[..., 1] <= image_size[:, None, 1])
    conf = torch.where(inside & torch.isfinite(uv).all(-1), conf, torch.zeros_like(conf))
    uv = torch.nan_to_num(uv)
    kp = torch.cat([uv, conf[..., None]], dim=-1)
    centre, size = person_box(kp, image_size)
    vis = (conf > 0)[..., None]
    norm_uv = torch.where(vis, (uv - centre[:, None]) / (size[:, None, None] / 2), torch.zeros_like(uv))
    f = torch.sqrt(K[:, 0, 0] * K[:, 1, 1])
    ray = (centre - K[:, :2, 2]) / torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=-1)
    box = torch.cat([ray, (size / f)[:, None], vis.float().mean(dim=(1, 2))[:, None]], dim=-1)
    return Condition(keypoints=torch.cat([norm_uv, conf[..., None]], -1), box=box, keypoints_px=kp, K=K)


# ----------------------------------------------------------------------------------- parameters <-> x0
def params_to_x0(global_orient: torch.Tensor, body_pose: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """SMPL axis-angle parameters → x0 (B, X_DIM) = [6D of 24 joints (global first), betas]."""
    global_orient = torch.as_tensor(global_orient, dtype=torch.float32)
    body_pose = torch.as_tensor(body_pose, dtype=torch.float32, device=global_orient.device)
    betas = torch.as_tensor(betas, dtype=torch.float32, device=global_orient.device)
    lead = global_orient.shape[:-1]
    aa = torch.cat([global_orient.reshape(*lead, 1, 3), body_pose.reshape(*lead, NUM_JOINTS - 1, 3)], dim=-2)
    r6 = axis_angle_to_rot6d(aa).reshape(*lead, NUM_JOINTS * 6)
    return torch.cat([r6, betas[..., :NUM_BETAS]], dim=-1)


def x0_to_params(x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """x0 (..., X_DIM) → dict(global_orient (...,3), body_pose (...,69), betas (...,10)), axis-angle."""
    lead = x0.shape[:-1]
    aa = rot6d_to_axis_angle(x0[..., : NUM_JOINTS * 6].reshape(*lead, NUM_JOINTS, 6))
    return {
        "global_orient": aa[..., 0, :],
        "body_pose": aa[..., 1:, :].reshape(*lead, (NUM_JOINTS - 1) * 3),
        "betas": x0[..., NUM_JOINTS * 6 :],
    }


# ---------------------------------------------------------------------------------------------- network
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class HMRDiffusion(nn.Module):
    """Conditional eps-predictor over x0 = [24×6D, 10 betas], with its DDPM noise schedule as buffers."""

    X_DIM = X_DIM

    def __init__(self, config: DiffusionConfig | None = None):
        super().__init__()
        self.config = config = config or DiffusionConfig()
        config.validate()
        d = config.d_model
        self.num_timesteps = config.T
        betas = torch.linspace(config.beta_start, config.beta_end, config.T, dtype=torch.float64)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
        self.register_buffer("x_mean", torch.zeros(X_DIM))
        self.register_buffer("x_std", torch.ones(X_DIM))

        self.joint_in = nn.Linear(6, d)
        self.shape_in = nn.Linear(NUM_BETAS, d)
        self.kp_in = nn.Linear(4, d)
        self.box_in = nn.Sequential(nn.Linear(4, d), nn.SiLU(), nn.Linear(d, d))
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        if config.global_cond:
            self.cond_mlp = nn.Sequential(nn.Linear(NUM_KEYPOINTS * 4 + 4, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        # token-type / index embeddings: 25 state tokens, 17 keypoints, box, time
        self.state_pos = nn.Parameter(torch.randn(NUM_JOINTS + 1, d) * 0.02)
        self.kp_pos = nn.Parameter(torch.randn(NUM_KEYPOINTS, d) * 0.02)
        self.box_pos = nn.Parameter(torch.randn(1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d,
            config.heads,
            d * config.ff_mult,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.joint_out = nn.Linear(d, 6)
        self.shape_out = nn.Linear(d, NUM_BETAS)
        for head in (self.joint_out, self.shape_out):  # start as "predict zero noise": stable early training
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    # -- normalisation ------------------------------------------------------------------------------
    def set_normalization(self, x0: torch.Tensor) -> None:
        """Fit the per-dimension mean/std of x0 on training data (stored in the checkpoint)."""
        x0 = x0.to(self.x_mean.device, torch.float32)
        self.x_mean.copy_(x0.mean(0))
        self.x_std.copy_(x0.std(0).clamp_min(self.config.std_floor))

    def normalize(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0 - self.x_mean) / self.x_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.x_std + self.x_mean

    # -- DDPM pieces ---------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Noise raw x0 to step t: ``sqrt(ᾱ_t)·norm(x0) + sqrt(1-ᾱ_t)·eps`` (standardised space)."""
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        return ab.sqrt() * self.normalize(x0) + (1 - ab).sqrt() * eps

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """eps_θ(x_t, t, c): (B, X_DIM) for x_t (B, X_DIM) in standardised space and t (B,) long."""
        B = x_t.shape[0]
        if len(cond) != B:
            raise ValueError(f"condition batch {len(cond)} != x_t batch {B}")
        joints = self.joint_in(x_t[:, : NUM_JOINTS * 6].reshape(B, NUM_JOINTS, 6))
        shape = self.shape_in(x_t[:, NUM_JOINTS * 6 :])[:, None]
        temb = self.t_mlp(timestep_embedding(t, self.config.d_model))[:, None]
        state = torch.cat([joints, shape], 1) + self.state_pos + temb
        kp = cond.keypoints
        vis = (kp[..., 2:3] > 0).float()
        kp_feat = torch.cat([kp, vis], -1)
        kp_tok = self.kp_in(kp_feat) + self.kp_pos
        if self.config.global_cond:
            # widths spelled out here and below: reshape(B, -1) of an empty batch (B = 0) is ambiguous and raised
            state = state + self.cond_mlp(torch.cat([kp_feat.reshape(B, NUM_KEYPOINTS * 4), cond.box], -1))[:, None]
        box_tok = self.box_in(cond.box)[:, None] + self.box_pos
        h = self.encoder(torch.cat([state, kp_tok, box_tok, temb], 1))
        h = self.norm(h[:, : NUM_JOINTS + 1])
        joints_out = self.joint_out(h[:, :NUM_JOINTS]).reshape(B, NUM_JOINTS * 6)
        out = torch.cat([joints_out, self.shape_out(h[:, NUM_JOINTS])], -1)
        if self.config.prediction == "eps":
            return out
        ab = self.alphas_cumprod[t].unsqueeze(-1)
        return ab.sqrt() * out + (1 - ab).sqrt() * x_t  # v → eps

    def loss(
        self,
        x0: torch.Tensor,
        cond: Condition,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        snr_gamma: float | None = None,
        weighting: str = "eps",
    ) -> torch.Tensor:
        """DDPM eps-MSE per sample (B,), t ~ U{0..T-1} and eps ~ N(0, I) unless given.

        Plain (unweighted) by default — the objective the alignment losses build on. ``snr_gamma`` applies
        Min-SNR-γ weighting (Hang et al. 2023), ``min(SNR_t, γ) / SNR_t`` on the eps loss and
        ``min(SNR_t, γ) / (SNR_t + 1)`` on the v loss (the same weight on the x0 error): low-noise steps, whose
        eps error is mostly irreducible, stop drowning out the noisier steps where the keypoints decide the pose. The
        base training may use it. ``weighting="v"`` is the v-prediction loss ``||v̂ − v||²`` (= eps-MSE / ᾱ_t),
        which the base recipe uses: it weights high-noise steps like an x0 regression, so the keypoints are
        learned within a CPU-sized budget.
        """
        B = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), device=x0.device, generator=generator)
        if eps is None:
            eps = torch.randn(x0.shape, device=x0.device, generator=generator)
        pred = self.predict_eps(self.q_sample(x0, t, eps), t, cond)
        mse = (pred - eps).pow(2).mean(-1)
        if weighting == "v":  # ||v̂ − v||² = ||epŝ − eps||² / ᾱ_t
            mse = mse / self.alphas_cumprod[t]
        elif weighting != "eps":
            raise ValueError(f"unknown loss weighting {weighting!r} (eps or v)")
        if snr_gamma is not None:
            ab = self.alphas_cumprod[t]
            snr = ab / (1 - ab)
            # relative to the x0 error both are min(SNR, γ); the v loss already carries (SNR + 1) of it
            mse = mse * snr.clamp_max(snr_gamma) / (snr + 1 if weighting == "v" else snr)
        return mse

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------- sampling
@dataclass
class HypothesisGroup:
    """N hypotheses for each of B inputs. Arrays are (B, N, …); ``x0`` is the raw diffused vector."""

    global_orient: torch.Tensor
    body_pose: torch.Tensor
    betas: torch.Tensor
    transl: torch.Tensor
    x0: torch.Tensor
    extra: dict = field(default_factory=dict)

    @property
    def num_generations(self) -> int:
        return int(self.x0.shape[1])

    def __repr__(self) -> str:
        """One line: the batch, group size, device and dtype. The dataclass repr printed every tensor (16,000
        characters for a group of 64) when a notebook cell ended with ``sample(...)``; :meth:`numpy` gives the
        arrays."""
        try:
            return (f"HypothesisGroup(B={int(self.x0.shape[0])}, N={self.num_generations}, "
                    f"device={str(self.x0.device)!r}, dtype={str(self.x0.dtype).removeprefix('torch.')!r}, "
                    f"extra={sorted(self.extra)!r})")
        except Exception:  # a hand-built group (x0 None or 1-D, extra None) still prints, as a Sample does
            return f"HypothesisGroup(x0 of type {type(self.x0).__name__}, extra of type {type(self.extra).__name__})"

    def flat(self) -> dict[str, torch.Tensor]:
        """(B·N, …) views, for one batched body-model call."""
        return {k: getattr(self, k).reshape(-1, getattr(self, k).shape[-1]) for k in self._keys()}

    def numpy(self, b: int | None = None) -> dict[str, Any]:
        """Plain numpy arrays (for ``hypotheses.npz``): the whole group, or the N hypotheses of input b."""
        return {
            k: (getattr(self, k) if b is None else getattr(self, k)[b]).detach().cpu().numpy() for k in self._keys()
        }

    @staticmethod
    def _keys() -> tuple[str, ...]:
        return ("global_orient", "body_pose", "betas", "transl", "x0")


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """``steps`` evenly spaced timesteps from T-1 down to 0 (steps=1 → just T-1)."""
    if steps < 1 or steps > T:
        raise InputError(f"DDIM steps must be in 1..{T}, got {steps}")
    if steps == 1:
        return torch.tensor([T - 1])
    return torch.linspace(T - 1, 0, steps).round().long()


def check_sampling_args(num_generations: int, steps: int, eta: float = 0.0, guidance: float = 0.0,
                        num_timesteps: int | None = None) -> None:
    """The sampler's limits in the words of the CLI options, for a command to check before it loads a model or
    a split or makes a folder (``num_timesteps`` unknown then) and for :func:`~hmrcritic.hmr.evaluate.
    evaluate_model` (with it, the upper bound on ``steps`` too)."""
    for name, value, integer in (("--num-generations", num_generations, True), ("--steps", steps, True),
                                 ("--eta", eta, False), ("--guidance", guidance, False)):
        check_number(name, value, integer)
    if not 1 <= num_generations <= MAX_GENERATIONS:
        raise InputError(f"--num-generations must be in 1..{MAX_GENERATIONS}, got {num_generations}")
    if steps < 1:
        raise InputError(f"--steps (DDIM steps) must be ≥ 1, got {steps}")
    if num_timesteps is not None and steps > num_timesteps:  # in the flag's words, as the lower bound above
        raise InputError(f"--steps: DDIM steps must be in 1..{num_timesteps} (the model's diffusion timesteps), "
                         f"got {steps}")
    for name, value in (("eta", eta), ("guidance", guidance)):
        if not math.isfinite(float(value)) or float(value) < 0:
            raise InputError(f"--{name} must be a finite number ≥ 0, got {value}")


@torch.no_grad()
def ddim_sample_x0(
    model: HMRDiffusion,
    cond: Condition,
    steps: int = 10,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    clip: float = 6.0,
    guide_fn=None,
    guidance: float = 0.0,
    guide_iters: int = 2,
    row_chunks: list[slice] | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) from pure noise to raw x0, one batched network call per step.

    ``clip`` bounds the predicted standardised x0 (avoids rare blow-ups at very few steps). With
    ``guide_fn`` (raw x0 (R,X_DIM) → energy (R,)) and ``guidance`` > 0, each step's x0 prediction takes
    ``guide_iters`` gradient steps on the energy before DDIM continues from it (reconstruction guidance).

    ``row_chunks`` (contiguous slices covering the rows in order) runs the network and the guidance a block of rows
    at a time within each step — bounded memory at large B·N — while x, and every step's ``eta`` noise drawn for all
    rows at once, stay whole: the generator draws what it draws without chunks, so the samples are the same. With it
    ``guide_fn`` is a list, one energy per block (an energy is built for its rows' keypoints).
    """
    B = len(cond)
    device = model.alphas_cumprod.device
    gen_device = generator.device if generator is not None else device
    x = x_T if x_T is not None else torch.randn(B, X_DIM, generator=generator, device=gen_device).to(device)
    ts = ddim_timesteps(model.num_timesteps, steps).tolist()
    ac = model.alphas_cumprod
    blocks = [slice(0, B)] if row_chunks is None else list(row_chunks)
    energies = [guide_fn] if row_chunks is None else list(guide_fn or [None] * len(blocks))
    conds = [cond] if row_chunks is None else [cond.index(sl) for sl in blocks]
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device)
        z0s = []
        for sl, c, energy in zip(blocks, conds, energies, strict=True):
            xb = x if row_chunks is None else x[sl]
            tt = torch.full((len(xb),), t, device=device, dtype=torch.long)
            eps = model.predict_eps(xb, tt, c)
            z0 = ((xb - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-clip, clip)
            # no rows: nothing to guide (and no graph to grad)
            if energy is not None and guidance > 0 and len(xb) > 0:
                for _ in range(guide_iters):
                    with torch.enable_grad():
                        z = z0.detach().requires_grad_(True)
                        (g,) = torch.autograd.grad(energy(model.denormalize(z)).sum(), z)
                    z0 = (z0 - guidance * torch.nan_to_num(g)).clamp(-clip, clip)
            z0s.append(z0)
        z0 = z0s[0] if row_chunks is None else torch.cat(z0s)
        eps = (x - a_t.sqrt() * z0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
        x = a_prev.sqrt() * z0 + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * torch.randn(x.shape, generator=generator, device=gen_device).to(device)
    return model.denormalize(x)


MIN_JOINT_DEPTH_M = 0.1  # no visible keypoint's joint nearer the camera than this (in front of it at all)


def solve_translation(
    joints_body: torch.Tensor, keypoints: torch.Tensor, K: torch.Tensor, min_depth: float = 0.3,
    min_joint_depth: float | None = MIN_JOINT_DEPTH_M,
) -> torch.Tensor:
    """Camera translation t (…,3) that best projects body points (…,J,3) (at transl=0) onto keypoints.

    For each visible keypoint (u, v, w): ``fx(X+tx) + (cx-u)(Z+tz) = 0`` and ``fy(Y+ty) + (cy-v)(Z+tz) = 0``
    — linear in t; weighted by confidence and solved as 3×3 normal equations, batched. A tiny ridge towards
    t = (0, 0, 3 m) keeps inputs with fewer than two visible keypoints well posed (negligible otherwise).

    The depth is kept in front: the root at ``min_depth`` or more and every visible keypoint's joint at
    ``min_joint_depth`` or more (with tx, ty re-fitted for that depth). The algebraic residual shrinks as
    points approach the camera centre, so a badly wrong body could fit with a joint *behind* the camera even
    with its root 0.3 m or more away: 0.4 % of the base model's wild hypotheses had one, and its projection
    (≈ 1e8 px) made the mean reprojection of a whole evaluation meaningless. ``min_joint_depth=None`` bounds
    the root alone (the keypoint-guidance energy's solve, unchanged so guided sampling is as shipped).
    """
    X, Y, Z = joints_body.unbind(-1)
    u, v, w = keypoints.unbind(-1)
    w = w.clamp_min(0)
    K = K.to(joints_body.dtype)
    while K.ndim < joints_body.ndim:  # (B,3,3) → broadcast over extra leading dims such as N
        K = K.unsqueeze(-3)
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    zero = torch.zeros_like(X)
    ax = torch.stack([fx.expand_as(X), zero, cx - u], -1)  # (…,J,3)
    ay = torch.stack([zero, fy.expand_as(Y), cy - v], -1)
    bx = -(fx * X + (cx - u) * Z)
    by = -(fy * Y + (cy - v) * Z)
    A = torch.cat([ax, ay], -2)  # (…,2J,3)
    b = torch.cat([bx, by], -1)
    wts = torch.cat([w, w], -1)
    AtW = A.transpose(-1, -2) * wts[..., None, :]
    M = AtW @ A
    eye = torch.eye(3, dtype=A.dtype, device=A.device)
    trace = M.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    lam = 1e-7 * trace + 1e-6 * (fx * fy).squeeze(-1)[..., None, None]
    prior = torch.tensor([0.0, 0.0, 3.0], dtype=A.dtype, device=A.device)
    M = M + lam * eye
    rhs = (AtW @ b[..., None]).squeeze(-1) + lam[..., 0] * prior
    t = torch.linalg.solve(M, rhs)
    # A badly wrong body can fit best "behind" the camera; keep it in front (depth ≥ the floor) and
    # re-fit tx, ty for that depth so the hypothesis still lands on the keypoints.
    floor = torch.full_like(t[..., 2:3], min_depth)
    if min_joint_depth is not None:  # the nearest visible joint at min_joint_depth or more
        nearest = torch.where(w > 0, Z, torch.full_like(Z, torch.inf)).amin(-1, keepdim=True)
        floor = torch.maximum(floor, min_joint_depth - nearest)
    tz = torch.maximum(t[..., 2:3], floor)
    wsum = w.sum(-1, keepdim=True)
    tx = (w * (-X - (cx - u) * (Z + tz) / fx)).sum(-1, keepdim=True) / wsum.clamp_min(1e-9)
    ty = (w * (-Y - (cy - v) * (Z + tz) / fy)).sum(-1, keepdim=True) / wsum.clamp_min(1e-9)
    refit = (t[..., 2:3] < floor) & (wsum > 0)
    return torch.where(refit, torch.cat([tx, ty, tz], -1), t)


def reprojection_energy(body, keypoints: torch.Tensor, K: torch.Tensor):
    """Energy for keypoint guidance: confidence-weighted squared 2D error of the COCO-17 joints, with the
    translation solved per hypothesis, in units of the person-box size (so it is image-scale free)."""
    from hmrcritic.hmr.camera import project

    w = keypoints[..., 2].clamp_min(0)
    size = person_box(keypoints, 2 * K[:, :2, 2])[1]

    def energy(x0: torch.Tensor) -> torch.Tensor:
        p = x0_to_params(x0)
        out = body(p["global_orient"], p["body_pose"], p["betas"], torch.zeros(x0.shape[0], 3, device=x0.device))
        coco = body.coco17(out)
        t = solve_translation(coco, keypoints, K, min_joint_depth=None)
        uv = project(coco + t[:, None], K)
        err = (uv - keypoints[..., :2]).pow(2).sum(-1) / size[:, None] ** 2
        return (w * err).sum(-1) / w.sum(-1).clamp_min(1e-6)

    return energy


@torch.no_grad()
@keywords_checked
def sample(
    model: HMRDiffusion,
    cond: Condition,
    num_generations: int = 16,
    steps: int = 10,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    K: torch.Tensor | None = None,
    keypoints: torch.Tensor | None = None,
    body=None,
    solve_transl: bool = True,
    guidance: float = 0.0,
) -> HypothesisGroup:
    """Draw ``num_generations`` hypotheses for each of the B inputs in one batched pass per step (B·N rows).

    ``K`` (B,3,3) and pixel ``keypoints`` (B,17,3) default to the ones stored in ``cond``; with them the
    camera translation of every hypothesis is solved from its COCO-17 joints (``body``: a BodyModel,
    default ``load_body_model()``). Same generator seed and the same batch → same hypotheses; one generator
    draws the noise of the whole batch, so an input sampled alone or at another place in a batch gets other
    hypotheses (as likely, not the same ones).

    ``guidance`` > 0 (our extension, off by default so the model's own spread is what is measured and
    aligned) nudges every step's x0 prediction down the 2D reprojection energy of the visible keypoints
    (:func:`reprojection_energy`); occluded joints carry no energy and keep the model's diversity.
    Arguments of the wrong type (``cond=None``, ``num_generations="4"``, a seed as ``generator``) are refused as
    :class:`InputError` before any work; numpy / torch scalars are numbers like any other.
    """
    if not isinstance(cond, Condition):
        raise InputError(f"cond must be a Condition (from condition_from_keypoints), got {type(cond).__name__}")
    # a checkpoint path or None in place of the model failed as "'str' object has no attribute 'alphas_cumprod'"
    # (duck-typed: a torch.compile'd model forwards its attributes and is accepted)
    is_model = isinstance(getattr(model, "alphas_cumprod", None), torch.Tensor) and callable(
        getattr(model, "predict_eps", None))
    if not is_model:
        hint = " (load it first: load_model(path))" if isinstance(model, str | Path) or model is None else ""
        raise InputError(f"model must be an HMRDiffusion{hint}, got {type(model).__name__}")
    for name, value, integer in (("num_generations", num_generations, True), ("steps", steps, True),
                                 ("eta", eta, False), ("guidance", guidance, False)):
        check_number(name, value, integer)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator or None (torch.Generator().manual_seed(seed)), got "
                         f"{type(generator).__name__}")
    if not 1 <= num_generations <= MAX_GENERATIONS:
        raise InputError(f"num_generations must be in 1..{MAX_GENERATIONS}, got {num_generations} "
                         "(each hypothesis costs about 0.5 MB while sampling and critiquing)")
    for name, value in (("eta", eta), ("guidance", guidance)):
        if not math.isfinite(float(value)) or float(value) < 0:
            raise InputError(f"{name} must be a finite number ≥ 0, got {value}")
    device = model.alphas_cumprod.device
    # float32, as condition_from_keypoints gives it: a Condition built by hand from float64 arrays (numpy's default)
    # failed in the network as "mat1 and mat2 must have the same dtype, but got Double and Float"
    cond = Condition(*[None if v is None else v.to(device, torch.float32) for v in cond._values()])
    B, N = len(cond), num_generations
    # K / keypoints given as something that is not numbers (a string, ragged lists) are the one-line InputError
    # of condition_from_keypoints, not torch's bare TypeError / ValueError
    K = cond.K if K is None else _as_float_tensor("K", K, "(B,3,3) or (3,3) intrinsics", device)
    if keypoints is None:
        keypoints = cond.keypoints_px
    else:
        keypoints = _as_float_tensor("keypoints", keypoints, "(B,17,3) or (17,3) numbers [u, v, conf]", device)
    # one K (3,3) / keypoint set (17,3) serves every input; any other shape is refused: repeat_interleave on a
    # (3,3) K repeated its rows, and the translation solve read fy = 0 from it without an error
    if K is not None and K.shape[-2:] == (3, 3) and K.numel() == 9:
        K = K.reshape(3, 3).expand(B, 3, 3)
    if keypoints is not None and keypoints.shape[-2:] == (NUM_KEYPOINTS, 3) and keypoints.numel() == NUM_KEYPOINTS * 3:
        keypoints = keypoints.reshape(NUM_KEYPOINTS, 3).expand(B, NUM_KEYPOINTS, 3)
    if K is not None and K.shape != (B, 3, 3):
        raise InputError(f"K must have shape (B,3,3) = ({B},3,3) or (3,3), got {tuple(K.shape)}")
    if keypoints is not None and keypoints.shape != (B, NUM_KEYPOINTS, 3):
        raise InputError(f"keypoints must have shape (B,17,3) = ({B},17,3) or (17,3), got {tuple(keypoints.shape)}")
    have_2d = K is not None and keypoints is not None
    if body is not None and not (callable(body) and hasattr(body, "coco17")):  # a file name: AttributeError at the end
        raise InputError(f"body must be a BodyModel (hmr.body.load_body_model(path)) or None, got "
                         f"{type(body).__name__}")
    if body is None and have_2d and (solve_transl or guidance > 0):
        from hmrcritic.hmr.body import load_body_model

        body = load_body_model(device=str(device))
    guide_fn = None
    if guidance > 0 and have_2d:
        guide_fn = reprojection_energy(body, keypoints.repeat_interleave(N, 0), K.repeat_interleave(N, 0))
    # dropout draws from the global RNG, not ``generator``: a model left in training mode (a freshly built
    # HMRDiffusion is) with dropout > 0 gave other hypotheses for the same seed at every call, and moved the caller's
    # RNG. Sampled in eval mode, and put back; a model without dropout samples exactly as before
    dropout = getattr(getattr(model, "config", None), "dropout", 0.0)
    noisy = bool(getattr(model, "training", False)) and isinstance(dropout, int | float) and dropout > 0
    if noisy:
        model.eval()
    try:
        x0 = ddim_sample_x0(
            model,
            cond.repeat_interleave(N),
            steps=steps,
            eta=eta,
            generator=generator,
            guide_fn=guide_fn,
            guidance=guidance,
        )
    finally:
        if noisy:
            model.train()
    params = x0_to_params(x0)
    transl = torch.zeros(B * N, 3, device=device)
    if solve_transl and have_2d:
        zeros = torch.zeros(B * N, 3, device=device)
        coco = body.coco17(body(params["global_orient"], params["body_pose"], params["betas"], zeros))
        transl = solve_translation(coco, keypoints.repeat_interleave(N, 0), K.repeat_interleave(N, 0))
    return HypothesisGroup(
        global_orient=params["global_orient"].reshape(B, N, 3),
        body_pose=params["body_pose"].reshape(B, N, 69),
        betas=params["betas"].reshape(B, N, NUM_BETAS),
        transl=transl.reshape(B, N, 3),
        x0=x0.reshape(B, N, X_DIM),
    )


# ------------------------------------------------------------------------------------------- checkpoints
def save_model(model: HMRDiffusion, path: str | Path, extra: dict | None = None) -> Path:
    """Atomically write a self-describing checkpoint (format tag, config, weights, JSON-able ``extra``)."""
    import io

    from hmrcritic.io import atomic_torch_save

    # read_checkpoint loads weights-only: an ``extra`` holding anything else (a numpy float from a metric, a Path)
    # was written, and the finished model could then never be loaded ("corrupt or not a torch file")
    buf = io.BytesIO()
    torch.save(extra or {}, buf)
    buf.seek(0)
    try:
        torch.load(buf, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (whatever the weights-only loader refuses)
        what = _refused_global(exc) or type(exc).__name__
        raise InputError(f"save_model: extra holds a value load_model cannot read back ({what}); keep it to plain "
                         f"data (dict, list, str, int, float, bool, None), e.g. float(x) for a numpy number; "
                         f"nothing was written to {path}") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return atomic_torch_save(path, payload)


def _refused_global(exc: BaseException) -> str | None:
    """The Python class torch's weights-only loader refused (``numpy._core.multiarray.scalar``), if that is why."""
    import re

    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return found.group(1) if found else None


def damaged_member(path: Path) -> str | None:
    """The first member of the torch (zip) file at ``path`` whose bytes fail the CRC-32 the zip records for it, or
    None. ``torch.load`` does not check them: a flipped byte inside the weights loaded as a model with other
    weights, silently. A file that is no zip at all (or a torn one) is left to ``torch.load`` to refuse."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip()
    except Exception:  # noqa: BLE001 (not a zip, or one too torn to walk: torch.load says so, naming the file)
        return None


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint file's payload (no model built). Raises AssetError naming the path."""
    path = Path(path)
    if path.is_dir():
        # not a training state: train-base's state.pt, finetune's OUT.state.pt (read_checkpoint refuses both)
        found = sorted(p.name for p in path.glob("*.pt")
                       if not (p.name == "state.pt" or p.name.endswith(".state.pt")))[:3]
        raise AssetError(f"model checkpoint {path} is a folder; give the .pt file"
                         + (f" (it holds {', '.join(found)})" if found else ""))
    if not path.is_file():
        raise AssetError(f"model checkpoint not found: {path}")
    if member := damaged_member(path):
        raise AssetError(f"model checkpoint {path} is damaged: its part {member} does not match the checksum it was "
                         "written with (a bad copy or disk); copy it again or regenerate it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if refused := _refused_global(exc):  # a whole pickled module, numpy values: a torch file, not a corrupt one
            raise AssetError(f"model checkpoint {path} is a torch file holding Python objects beyond weights and "
                             f"plain data ({refused}), which are not loaded (they could run code); give a checkpoint "
                             "written by hmrcritic (train-base, finetune or hmr.diffusion.save_model)") from None
        raise AssetError(f"model checkpoint is corrupt or not a torch file: {path} ({type(exc).__name__})") from None
    if isinstance(payload, dict) and "format" not in payload and {"step", "ema", "opt"} <= set(payload):
        # a run's resume state given as the model (the folder case above says the same): "missing format tag" did
        # not say which file to give instead
        raise AssetError(f"not an hmrcritic diffusion checkpoint but a training state (train-base's state.pt or "
                         f"finetune's OUT.state.pt, at step {payload.get('step')}): {path}; give the .pt its run "
                         "writes when it finishes (train-base: model.pt in the run folder; finetune: OUT)")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise AssetError(f"not an hmrcritic diffusion checkpoint (missing format tag '{CHECKPOINT_FORMAT}'): {path}; "
                         "give a checkpoint hmrcritic wrote (train-base's model.pt, finetune's --out, "
                         "hmr.diffusion.save_model)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise AssetError(f"checkpoint version {payload.get('version')} unsupported (want {CHECKPOINT_VERSION}): {path}")
    return payload


def _state_mismatch(skeleton: nn.Module, state: dict) -> str:
    """What keeps ``state`` from loading into ``skeleton`` (missing, unexpected or misshaped entries; "" when it
    fits), compared without allocating: ``skeleton`` lives on the meta device."""
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    wrong = [f"{k} is {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} in the file, "
             f"{want[k]} in the model" for k, v in state.items()
             if k in want and not (isinstance(v, torch.Tensor) and tuple(v.shape) == want[k])]
    # a tensor of the right shape but integers, booleans or complex numbers was cast into the float weights on load
    # (truncated to whole numbers, 0/1, the imaginary part dropped): a model with other weights, no word said
    real = {k for k, v in skeleton.state_dict().items() if v.is_floating_point()}
    wrong += [f"{k} holds {v.dtype} numbers in the file, floats in the model" for k, v in state.items()
              if k in real and isinstance(v, torch.Tensor) and tuple(v.shape) == want[k] and not v.is_floating_point()]
    found = (("missing", ", ", sorted(set(want) - set(state))),
             ("unexpected", ", ", sorted(map(str, set(state) - set(want)))), ("size mismatch:", "; ", wrong))
    return "; ".join(f"{what} {sep.join(items[:3])}" + (f" and {len(items) - 3} more" if len(items) > 3 else "")
                     for what, sep, items in found if items)[:300]


@keywords_checked
def load_model(path: str | Path | None = None, device: str = "cpu") -> HMRDiffusion:
    """Load a checkpoint (None → the shipped ``hmrcritic/assets/base_model.pt``), in eval mode on ``device``.

    A missing, corrupt or mismatched file (wrong config, missing/extra/misshaped weights) raises
    :class:`AssetError` naming the path; a path that is not one (a number, "") :class:`InputError`. ``~`` is
    expanded, as by :func:`~hmrcritic.hmr.body.load_body_model`.
    """
    from hmrcritic import config as hconfig
    from hmrcritic.config import check_device

    check_device(device)
    # the path as load_body_model reads it: "~/ckpt.pt" expanded (it was "not found" from Python, where no shell
    # expands it); "" (an unset variable's default) was read as the working folder ("model checkpoint . is a
    # folder"), and a number failed as a bare TypeError
    if path is not None and not isinstance(path, str | os.PathLike):
        raise InputError(f"model checkpoint path must be a str or Path (or None for the shipped model), got "
                         f"{type(path).__name__}")
    if path is not None and not str(path).strip():
        raise InputError("model checkpoint path is empty; give the .pt file (or None for the shipped model)")
    path = hconfig.path_arg(path, "model checkpoint path") if path is not None else DEFAULT_CHECKPOINT
    payload = read_checkpoint(path)
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise AssetError(f"checkpoint has no state_dict: {path}")
    # The config alone sizes the network: a file of a few hundred bytes asking for d_model 8192 × 64 layers had
    # tens of GB allocated and initialised (swap, the OOM killer) before its weights were found not to fit. The
    # network is laid out on the meta device first (no memory) and checked against the weights the file really
    # holds, so the model built is never larger than the file; the layer count is checked before even that
    # (a million layers take minutes to lay out).
    try:
        config = DiffusionConfig.from_dict(dict(payload["config"]))
        held = len({k.split(".")[2] for k in state if isinstance(k, str) and k.startswith("encoder.layers.")})
        if not isinstance(config.layers, int) or config.layers != held:
            raise AssetError(f"checkpoint weights do not match the model: {path} (the config asks for "
                             f"{config.layers!r} layers, the file holds weights for {held})")
        with torch.device("meta"):
            skeleton = HMRDiffusion(config)
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"checkpoint config does not match this version of hmrcritic: {path} ({exc})") from None
    if detail := _state_mismatch(skeleton, state):
        raise AssetError(f"checkpoint weights do not match the model: {path} ({detail})")
    # NaN / inf weights (no run of hmrcritic saves them: a diverging loss stops before the step) loaded, and every
    # hypothesis sampled from the model was NaN, far from the file that made it so
    if nonfinite := sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())):
        raise AssetError(f"checkpoint {path} holds NaN or infinite weights ({', '.join(nonfinite[:3])}"
                         f"{' …' if len(nonfinite) > 3 else ''}): not a usable model; regenerate it")
    model = HMRDiffusion(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(s.strip() for s in first[:3])[:300]
        raise AssetError(f"checkpoint weights do not match the model: {path} ({detail})") from None
    model.checkpoint_path = str(path)
    # another writer's "extra" (null, a list): the documented dict, as evaluate and train-base --ship read it
    extra = payload.get("extra", {})
    model.checkpoint_extra = extra if isinstance(extra, dict) else {}
    return model.to(device).eval()


# ------------------------------------------------------------------------------ sample → files (CLI glue)
def sample_to_dir(
    model: HMRDiffusion,
    item,
    out_dir: str | Path,
    num_generations: int = 16,
    steps: int = 10,
    eta: float = 0.0,
    seed: int = 0,
    obj: bool = False,
    guidance: float = 0.0,
    render: bool = True,
    body=None,
    image=None,
    cols: int = 4,
) -> dict:
    """Sample a group for one input (a ``hmr.data.Sample``) and write it to ``out_dir``.

    Writes ``hypotheses.npz`` (global_orient, body_pose, betas, transl, x0, plus keypoints, K, image_size),
    with ``obj`` one ``hyp_XX.obj`` per hypothesis (camera frame), with ``render`` ``overlay_XX.png``,
    ``side_XX.png`` and ``grid.png`` (all N overlays, indexed). Returns a summary dict (paths, counts).
    """
    from hmrcritic.io import exclusive_lock

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one writer per folder: two runs into one --out each removed and wrote numbered files, and the folder ended
    # with the hypotheses of one beside the renders of the other
    with exclusive_lock(out_dir / ".sample.lock", "a sample", busy=lambda by: InputError(
            f"{out_dir}: another sample into this folder is running — {by}; wait for it, or give another --out")):
        return _sample_into(model, item, out_dir, num_generations=num_generations, steps=steps, eta=eta, seed=seed,
                            obj=obj, guidance=guidance, render=render, body=body, image=image, cols=cols)


def _sample_into(model: HMRDiffusion, item, out_dir: Path, num_generations: int, steps: int, eta: float, seed: int,
                 obj: bool, guidance: float, render: bool, body, image, cols: int) -> dict:
    """:func:`sample_to_dir`'s work, with ``out_dir`` made and held."""
    import numpy as np

    from hmrcritic.io import atomic_save_npz, atomic_write_json

    device = model.alphas_cumprod.device
    kp = torch.as_tensor(item.keypoints, dtype=torch.float32, device=device)[None]
    K = torch.as_tensor(item.K, dtype=torch.float32, device=device)[None]
    size = torch.as_tensor(item.image_size, dtype=torch.float32, device=device)[None]
    if body is None:
        from hmrcritic.hmr.body import load_body_model

        body = load_body_model(device=str(device))
    cond = condition_from_keypoints(kp, K, size)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    group = sample(model, cond, num_generations=num_generations, steps=steps, eta=eta, generator=gen, body=body,
                   guidance=guidance)
    arrays = group.numpy(0)
    bad = [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise AssetError(f"the model sampled non-finite {', '.join(bad)}: its checkpoint "
                         f"{getattr(model, 'checkpoint_path', None) or '(in memory)'} is broken (NaN/inf weights?); "
                         "nothing was written")
    # summary.json marks a finished folder: remove it (and a previous run's numbered files, which a smaller
    # -n would leave behind) before writing, so the folder never mixes two runs
    (out_dir / "summary.json").unlink(missing_ok=True)
    for pattern in ("hyp_[0-9][0-9]*.obj", "overlay_[0-9][0-9]*.png", "side_[0-9][0-9]*.png", "grid.png"):
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)  # another `sample` into this --out may have removed it
    arrays.update(keypoints=kp[0].cpu().numpy(), K=K[0].cpu().numpy(), image_size=size[0].cpu().numpy())
    files = {"hypotheses": str(atomic_save_npz(out_dir / "hypotheses.npz", **arrays))}
    flat = group.flat()
    verts = body(flat["global_orient"], flat["body_pose"], flat["betas"], flat["transl"]).vertices.cpu().numpy()
    if obj or render:
        from hmrcritic.hmr import render as R
    if obj:
        files["obj"] = [str(R.write_obj(out_dir / f"hyp_{i:02d}.obj", v, body.faces)) for i, v in enumerate(verts)]
    if render:
        if image is None and getattr(item, "image_path", None):
            from hmrcritic.hmr.data import read_image

            image = read_image(item.image_path)
        r = R.get_renderer()
        Kn, wh = K[0].cpu().numpy(), tuple(int(x) for x in item.image_size)
        files["overlay"], files["side"] = [], []
        # one scale for the group's side views, as in its grid: each framed to its own body, files put side by
        # side hid how the hypotheses differ in size
        extent = R.group_extent(verts, angle_deg=90.0)
        for i, v in enumerate(verts):
            ov = r.overlay(image, v, body.faces, Kn, image_size=wh)
            files["overlay"].append(str(R.save_png(out_dir / f"overlay_{i:02d}.png", ov)))
            side = r.side_view(v, body.faces, extent=extent)
            files["side"].append(str(R.save_png(out_dir / f"side_{i:02d}.png", side)))
        grid = r.group_grid(image, verts, body.faces, Kn, cols=cols, image_size=wh)
        files["grid"] = str(R.save_png(out_dir / "grid.png", grid))
    summary = {
        "sample_id": getattr(item, "sample_id", None),
        "num_generations": num_generations,
        "steps": steps,
        "eta": eta,
        "guidance": guidance,
        "seed": seed,
        "model": getattr(model, "checkpoint_path", None),
        # the body the hypotheses were posed on and their `transl` solved against: with a user's SMPL file the
        # posed pelvis is J0(betas) + transl (docs/CONTRACTS.md), so the same npz posed on another body (the
        # mannequin, whose J0 is 0) lands elsewhere; nothing in the folder said which body it was
        "body_model": getattr(body, "name", None),
        "body_sha256": getattr(body, "source_sha256", None),
        "files": files,
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
