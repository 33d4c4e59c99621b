"""The group preference dataset: format, writer helpers, reader and validator.

Layout of an export folder (``FORMAT_VERSION`` 1)::

    dataset.json        header: format version, model checkpoint hash, judge, num_generations, seed, counts
    manifest.jsonl      one GroupRecord per line (per-record checksum), appended by a single writer
    groups/<id>.cond.npz   condition: keypoints (17,3) px + conf, K (3,3), image_size (2,)  — no 3D labels
    groups/<id>.hyps.npz   hypotheses: x0 (N,D), global_orient (N,3), body_pose (N,69), betas (N,10),
                           transl (N,3)
    pairs.jsonl         derived, TRL ``prompt/chosen/rejected`` shape: best vs worst hypothesis of each group
    failures.jsonl      groups whose scoring failed (retried on the next run)

Why this shape: arrays stay out of the manifest (it stays greppable and small); every array file is
written atomically *before* its manifest line, and the line carries the content checksums of both files
plus its own checksum, so a reader can tell a complete record from a torn one after a kill -9. Array
checksums are over the array *contents* (name, dtype, shape, bytes), not the zip bytes, so the same group
exported twice — by any executor — has the same record.

No 3D label may enter this dataset: the array files are checked against allow-lists of keys on write, on
read and by ``validate_dataset``, and the reader refuses anything else by name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment.stats import ZERO_VARIANCE_TOL, advantages_np
from hmrcritic.errors import AssetError
from hmrcritic.io import (
    atomic_save_npz,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    npz_unpacked_bytes,
    read_jsonl,
    record_checksum,
)

FORMAT_VERSION = 1
HEADER = "dataset.json"
MANIFEST = "manifest.jsonl"
PAIRS = "pairs.jsonl"
FAILURES = "failures.jsonl"
GROUPS = "groups"

COND_KEYS = ("keypoints", "K", "image_size")
HYP_KEYS = ("x0", "global_orient", "body_pose", "betas", "transl")
# Names that would mean a 3D label (or something derived from one) leaked into the dataset.
LABEL_KEYS = frozenset(
    {
        "joints3d",
        "vertices",
        "keypoints_clean",
        "gt_joints",
        "gt_vertices",
        "labels",
        "global_orient",
        "body_pose",
        "betas",
        "transl",
        "category",
        "error_mm",
        "true_error_mm",
    }
)
# The three axes that accompany ``overall`` (see agent/schema.py).
AXES = ("motion_structure", "physical_feasibility", "image_alignment")


class ArrayRef(BaseModel):
    """A file under the dataset folder and the content checksum of its arrays."""

    path: str = Field(..., description="relative to the dataset folder")
    sha256: str

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        """``groups/<file>.npz``, as the writer makes it. A manifest is shared with a dataset, and a record whose
        path was absolute or climbed out (``../../x.npz``) had the reader, the validator and the finetuner open
        any .npz on the machine (``root / "/abs"`` is ``/abs``), and a dataset that was not self-contained
        validated as ok where it was made."""
        parts = v.split("/")
        if len(parts) != 2 or parts[0] != GROUPS or parts[1] in ("", ".", "..") or "\\" in v \
                or not v.endswith(".npz"):
            raise ValueError(f"array file path {v!r} is not {GROUPS}/<name>.npz inside the dataset folder")
        return v


class GroupRecord(BaseModel):
    """One scored group (one line of ``manifest.jsonl``)."""

    format_version: int = FORMAT_VERSION
    group_id: str
    input_id: str
    split: str | None = None
    source: str
    condition: ArrayRef
    hypotheses: ArrayRef
    num_hypotheses: int = Field(..., ge=1)
    x_dim: int = Field(..., ge=1)
    scores: list[HypothesisScore]
    advantages: list[float]
    zero_variance: bool
    judge: str
    memory_version: str
    model_hash: str
    seed: int
    group_seed: int
    checksum: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GroupRecord:
        n = self.num_hypotheses
        if len(self.scores) != n or len(self.advantages) != n:
            raise ValueError(f"scores/advantages must have num_hypotheses={n} entries")
        if [s.index for s in self.scores] != list(range(n)):
            raise ValueError("scores must be in hypothesis order with index 0..N-1")
        return self

    def to_line_dict(self) -> dict:
        """The JSON object written to the manifest, with its own checksum."""
        body = self.model_dump(mode="json", exclude={"checksum"})
        body["checksum"] = record_checksum(body)
        return body


DEFAULT_SCORER = "hmrcritic.agent.api:critique_group"  # what scores an export unless --scorer says otherwise


class DatasetHeader(BaseModel):
    format_version: int = FORMAT_VERSION
    kind: str = "hmrcritic.group_preferences"
    source: str
    split: str | None = None
    model_hash: str
    judge: str
    judge_model: str | None = None  # the VLM behind judge "vlm" (model @ endpoint); None for the builtin judge
    # the scoring function ("module:function", --scorer); headers written before it was recorded: the agent's
    scorer: str = DEFAULT_SCORER
    memory_version: str = "none"
    num_generations: int
    sample_steps: int
    seed: int
    x_dim: int | None = None
    # the agent settings the groups were scored with (export.agent_settings); None: written before they were recorded
    agent_settings: dict[str, Any] | None = None
    counts: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- ids


def group_id_for(source: str, input_id: str, seed: int) -> str:
    """Deterministic, file-name-safe id from where the input came from, its id and the export seed."""
    digest = hashlib.sha256(f"{source}|{input_id}|{seed}".encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(input_id))[:40]
    return f"{safe}-{digest}"


def group_seed_for(seed: int, input_id: str) -> int:
    """Per-group seed from (export seed, input id): the same group whatever worker or executor draws it."""
    return int(hashlib.sha256(f"{seed}:{input_id}".encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------------------- arrays


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """Content checksum of named arrays (key, dtype, shape, bytes; keys in sorted order)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(a.dtype.str.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_keys(arrays: Iterable[str], allowed: tuple[str, ...], where: str) -> None:
    keys = set(arrays)
    extra = keys - set(allowed)
    if extra:
        labels = sorted(extra & LABEL_KEYS)
        what = f"3D label key(s) {labels}" if labels else f"unexpected key(s) {sorted(extra)}"
        raise AssetError(f"{where}: {what} not allowed (allowed: {list(allowed)})")
    missing = set(allowed) - keys
    if missing:
        raise AssetError(f"{where}: missing key(s) {sorted(missing)}")


def _check_real(arrays: dict[str, np.ndarray], where: str) -> None:
    """Every array holds real numbers (ints or floats). An .npz may hold strings, bytes or complex numbers without
    pickling: a string array made the finiteness checks below raise a bare TypeError, which stopped ``validate``
    (meant to list what is wrong) and an export's resume with a traceback, and a complex K was read with its
    imaginary part silently dropped."""
    for k, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise AssetError(f"{where}: {k} holds {a.dtype} values, not real numbers")


def condition_arrays(keypoints: np.ndarray, K: np.ndarray, image_size) -> dict[str, np.ndarray]:
    """The only inputs a condition file may hold: 2D keypoints (px + confidence), intrinsics, image size.

    The image size is whole pixels (W, H), stored as int64 (docs/CONTRACTS.md): a fractional one (640.5, 480) was
    cut to (640, 480) here while the export sampled the group with 640.5, so the record named another condition
    than the hypotheses were drawn from. Refused, as a NaN or an overflowing size is (cast, they read as garbage)."""
    size = np.asarray(image_size, dtype=np.float64).reshape(2)
    whole = np.asarray(size, dtype=np.int64) if np.isfinite(size).all() and (np.abs(size) < 2**53).all() else None
    if whole is None or not np.array_equal(whole.astype(np.float64), size):
        raise AssetError(f"image_size must be whole pixels (W, H), got {size.tolist()}")
    return {
        "keypoints": np.asarray(keypoints, dtype=np.float32).reshape(17, 3),
        "K": np.asarray(K, dtype=np.float32).reshape(3, 3),
        "image_size": whole,
    }


def check_condition(arrays: dict[str, np.ndarray], where: str) -> None:
    _check_keys(arrays, COND_KEYS, where)
    _check_real(arrays, where)
    shapes = {"keypoints": (17, 3), "K": (3, 3), "image_size": (2,)}
    for k, shape in shapes.items():
        if tuple(arrays[k].shape) != shape:
            raise AssetError(f"{where}: {k} has shape {tuple(arrays[k].shape)}, expected {shape}")
    # A NaN or zero focal length (or image size) made every loss of the group NaN: the finetuner then stopped with
    # "diverged … lower --lr or --beta" at its first step and validate said the dataset was fine. (NaN keypoints
    # are allowed: they read as missing points.)
    K, size = arrays["K"], arrays["image_size"]
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise AssetError(f"{where}: K must be finite intrinsics with focal lengths > 0, got {K.tolist()}")
    if not (np.isfinite(size).all() and (size > 0).all()):
        raise AssetError(f"{where}: image_size must be (W, H) > 0, got {size.tolist()}")
    if not np.array_equal(np.floor(size), size):  # a float file's 640.5 was read back cut to 640 (int64)
        raise AssetError(f"{where}: image_size must be whole pixels (W, H), got {size.tolist()}")


def check_hypotheses(arrays: dict[str, np.ndarray], where: str, n: int | None = None) -> tuple[int, int]:
    """Checks keys and shapes of a hypotheses file; returns (N, D)."""
    _check_keys(arrays, HYP_KEYS, where)
    _check_real(arrays, where)
    x0 = arrays["x0"]
    if x0.ndim != 2:
        raise AssetError(f"{where}: x0 must be (N, D), got shape {tuple(x0.shape)}")
    N, D = x0.shape
    if n is not None and n != N:
        raise AssetError(f"{where}: x0 has {N} hypotheses, the record says {n}")
    for k, width in (("global_orient", 3), ("body_pose", 69), ("betas", 10), ("transl", 3)):
        if tuple(arrays[k].shape) != (N, width):
            raise AssetError(f"{where}: {k} has shape {tuple(arrays[k].shape)}, expected {(N, width)}")
    if not np.isfinite(x0).all():
        raise AssetError(f"{where}: x0 contains non-finite values")
    return int(N), int(D)


def write_group_arrays(root: Path, group_id: str, cond: dict, hyps: dict) -> tuple[ArrayRef, ArrayRef]:
    """Check and atomically write both array files of a group; returns their references."""
    check_condition(cond, f"condition of {group_id}")
    check_hypotheses(hyps, f"hypotheses of {group_id}")
    refs = []
    for suffix, arrays in (("cond", cond), ("hyps", hyps)):
        rel = f"{GROUPS}/{group_id}.{suffix}.npz"
        atomic_save_npz(root / rel, **arrays)
        refs.append(ArrayRef(path=rel, sha256=arrays_checksum(arrays)))
    return refs[0], refs[1]


# A group's arrays are about 1 kB a hypothesis: far below this even for thousands of them.
MAX_ARRAY_FILE_BYTES = 256 << 20


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one group file. Refused before anything is decompressed when they would take more than
    :data:`MAX_ARRAY_FILE_BYTES`: an .npz is a zip, and a shared dataset's 300 kB file of zeros inflated to 320 MB
    in memory (a few such files, or one larger, and the reader, ``validate`` or the finetuner swapped or was
    killed) before the key and shape checks could refuse it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            size = npz_unpacked_bytes(z)
            if size > MAX_ARRAY_FILE_BYTES:
                raise AssetError(f"array file {path} would take {size / 2**20:.0f} MiB uncompressed (at most "
                                 f"{MAX_ARRAY_FILE_BYTES >> 20} MiB for one group): not a group's arrays")
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise AssetError(f"missing array file {path}") from None
    except AssetError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError …
        raise AssetError(f"unreadable array file {path}: {type(exc).__name__}: {exc}") from None


def build_record(**fields) -> GroupRecord:
    """A GroupRecord with advantages and the zero-variance flag derived from the overall scores."""
    overall = [s.overall for s in fields["scores"]]
    fields.setdefault("advantages", advantages_np(overall, "group"))
    fields.setdefault("zero_variance", bool(max(overall) - min(overall) <= ZERO_VARIANCE_TOL))  # the advantages' rule
    return GroupRecord(**fields)


# ------------------------------------------------------------------------------------------ manifest


def parse_manifest_line(line: str) -> GroupRecord | None:
    """A record from one manifest line, or None when the line is torn, corrupt or fails the schema."""
    line = line.strip()
    if not line:
        return None
    try:
        raw = json.loads(line)
        # the checksum walks the record in Python: a line nested a few hundred deep, which json reads, raised
        # RecursionError out of every reader (validate, finetune) instead of being a damaged line
        if not isinstance(raw, dict) or raw.get("checksum") != record_checksum(raw):
            return None
    except (ValueError, RecursionError):  # a line nested too deeply (hostile) is as unreadable; ValueError: not
        # JSON, or an integer of over 4,300 digits (Python's int-parsing limit, not a JSONDecodeError)
        return None
    try:
        return GroupRecord.model_validate(raw)
    except ValidationError:
        return None


def read_manifest(root: str | Path) -> list[GroupRecord]:
    """Complete, checksummed records in file order (torn lines dropped, first of duplicate ids kept)."""
    return scan_manifest(root)[0]


def scan_manifest(root: str | Path) -> tuple[list[GroupRecord], list[int], list[tuple[int, int, str, bool]]]:
    """:func:`read_manifest`'s records, plus what it left out: the numbers of the lines that are no record (torn,
    damaged) and each repeated group id as ``(line, first line, group_id, same record)``. The reader dropped both
    without a word while ``validate`` called them errors, so a user could not tell what finetune trained on."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return [], [], []
    out: list[GroupRecord] = []
    first: dict[str, tuple[int, str | None]] = {}
    skipped: list[int] = []
    repeats: list[tuple[int, int, str, bool]] = []
    # errors="replace": a line garbled into bytes that are not UTF-8 (a crash mid-write, an editor's encoding)
    # fails its checksum and is dropped like any torn line, instead of the decode error stopping every read
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            rec = parse_manifest_line(line)
            if rec is None:
                if line.strip():
                    skipped.append(lineno)
            elif rec.group_id in first:
                at, checksum = first[rec.group_id]
                repeats.append((lineno, at, rec.group_id, rec.checksum == checksum))
            else:
                first[rec.group_id] = (lineno, rec.checksum)
                out.append(rec)
    return out, skipped, repeats


def record_files_ok(root: Path, rec: GroupRecord) -> bool:
    """Both array files exist, have the checksums the record names and pass the key/shape checks."""
    try:
        cond = load_npz(root / rec.condition.path)
        hyps = load_npz(root / rec.hypotheses.path)
        check_condition(cond, rec.condition.path)
        n, d = check_hypotheses(hyps, rec.hypotheses.path, rec.num_hypotheses)
    except AssetError:
        return False
    return (
        d == rec.x_dim
        and arrays_checksum(cond) == rec.condition.sha256
        and arrays_checksum(hyps) == rec.hypotheses.sha256
    )


def repair_manifest(root: str | Path, check_files: bool = True) -> tuple[list[GroupRecord], int]:
    """Keep the valid records of a manifest and rewrite it atomically when anything had to be dropped.

    Called when an export starts or resumes: a kill -9 can leave a torn last line (or, never in practice,
    a record whose arrays are gone). Returns the kept records and how many lines were dropped.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        return [], 0
    raw_lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)  # see read_manifest
    kept, lines, seen = [], [], set()
    for line in raw_lines:
        rec = parse_manifest_line(line)
        if rec is None or rec.group_id in seen:
            continue
        if check_files and not record_files_ok(root, rec):
            continue
        seen.add(rec.group_id)
        kept.append(rec)
        lines.append(line if line.endswith("\n") else line + "\n")
    dropped = sum(1 for ln in raw_lines if ln.strip()) - len(kept)
    if dropped or (raw_lines and not raw_lines[-1].endswith("\n")):
        atomic_write_text(path, "".join(lines))
    return kept, dropped


def rewrite_manifest(root: str | Path, records: list[GroupRecord]) -> None:
    """Atomically replace the manifest (used to put records in input order once an export completes)."""
    atomic_write_jsonl(Path(root) / MANIFEST, [r.to_line_dict() for r in records])


def pair_records(records: Iterable[GroupRecord]) -> list[dict]:
    """TRL-style preference pairs: best vs worst hypothesis of each group with a score gap.

    ``prompt`` is the condition reference, ``chosen``/``rejected`` reference a hypothesis (file + index) with
    its scores. Ties resolve to the lowest index so the file is deterministic.
    """
    pairs = []
    for r in records:
        if r.zero_variance:
            continue
        overall = [s.overall for s in r.scores]
        best = int(np.argmax(overall))
        worst = int(np.argmin(overall))

        def side(i: int, r=r) -> dict:
            s = r.scores[i]
            return {
                "hypotheses": r.hypotheses.path,
                "index": i,
                "overall": s.overall,
                "scores": {a: getattr(s, a) for a in AXES},
                "advantage": r.advantages[i],
            }

        pairs.append(
            {
                "group_id": r.group_id,
                "prompt": {"condition": r.condition.path, "input_id": r.input_id},
                "chosen": side(best),
                "rejected": side(worst),
                "margin": overall[best] - overall[worst],
            }
        )
    return pairs


def write_pairs(root: str | Path, records: Iterable[GroupRecord]) -> int:
    pairs = pair_records(records)
    atomic_write_jsonl(Path(root) / PAIRS, pairs)
    return len(pairs)


def read_header(root: str | Path) -> DatasetHeader:
    path = Path(root) / HEADER
    if Path(root).is_file():  # `finetune --data prefs.jsonl`: "prefs.jsonl/dataset.json: not a …" named no folder
        raise AssetError(f"{root} is a file, not a group preference dataset folder (`hmrcritic export --out DIR` "
                         "makes one)")
    # `finetune --data typo` said "typo/dataset.json: not a group preference dataset", as if the folder were there
    if not Path(root).exists():
        raise AssetError(f"{root}: no such folder (`hmrcritic export --out DIR` makes a dataset)")
    if not path.exists():
        raise AssetError(f"{root}: not a group preference dataset (no {HEADER}; `hmrcritic export --out DIR` writes "
                         "one)")
    try:
        header = DatasetHeader.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise AssetError(f"{path}: malformed header: {exc.errors()[0]['msg']}") from None
    except UnicodeDecodeError as exc:  # e.g. re-saved as UTF-16 by an editor: a bare decode error named no file
        raise AssetError(f"{path}: malformed header: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if header.format_version != FORMAT_VERSION:
        # "unsupported (this reads 1)" left a user to guess which side is out of date and what to do about it
        newer = header.format_version > FORMAT_VERSION
        raise AssetError(
            f"{path}: format_version {header.format_version} unsupported (this hmrcritic reads {FORMAT_VERSION}): "
            + ("the dataset was written by a newer hmrcritic; read it with that version (or upgrade)" if newer else
               "the dataset was written by an older hmrcritic; export it again into a new folder")
        )
    return header


def advantages_match(rec: GroupRecord) -> bool:
    """The record's stored advantages are those of its overall scores (what the exporter wrote)."""
    return bool(np.allclose(advantages_np([s.overall for s in rec.scores], "group"), rec.advantages, atol=1e-5))


def header_mismatch(header: DatasetHeader, rec: GroupRecord) -> list[str]:
    """The header's settings a record disagrees with (``name=record value``): a record of another export."""
    diff = [
        f"{k}={getattr(rec, k)!r}"
        for k in ("source", "model_hash", "judge", "seed")
        if getattr(rec, k) != getattr(header, k)
    ]
    if rec.num_hypotheses != header.num_generations:
        diff.append(f"num_hypotheses={rec.num_hypotheses!r}")
    if header.x_dim is not None and rec.x_dim != header.x_dim:
        diff.append(f"x_dim={rec.x_dim!r}")
    # not the memory version: the agent records "none" for a group scored with rules and prototypes off
    # (HMRCRITIC_USE_RULES=0 …) under a header naming the memory, and a worker's store keeps the version it read at
    # its start; the export's _MemoryWatch is what notices a memory written meanwhile
    return diff


def write_header(root: str | Path, header: DatasetHeader) -> None:
    atomic_write_json(Path(root) / HEADER, header.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------- validate


# how to complete an unfinished export: the same command, except after the memory it scores with changed (the
# export stops on that, "memory … changed while this export ran", and refuses the same --out from then on: another
# memory_version). The advice named only the re-run, which is refused there.
RERUN_ADVICE = ("re-run the same export command to complete it (if the memory it scores with changed since, that "
                "re-run is refused: export into another --out, or use the groups written so far)")
_UNFINISHED = f"the last export into this folder did not finish (interrupted or still running); {RERUN_ADVICE}"
# the same for inputs that failed: an export stopped because its memory changed (its failures.jsonl lists the groups
# not attempted) is refused by that re-run, which "re-running the export retries them" promised would work
RETRY = "re-running the same export retries them"  # into a folder with no group: it takes the folder over
RETRY_ADVICE = (f"{RETRY} (if the memory it scores with changed since, that re-run is "
                "refused: export into another --out)")


class ValidationReport(BaseModel):
    path: str
    ok: bool
    groups: int = 0
    hypotheses: int = 0
    pairs: int = 0
    zero_variance_share: float = 0.0
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def validate_dataset(root: str | Path, max_errors: int = 50) -> ValidationReport:
    """Check a dataset folder end to end (strict: a torn manifest line is an error here).

    Header and format version; every manifest line parses, carries a correct checksum and fits the schema;
    group ids are unique; both array files of each record exist, hold exactly the allowed keys (no 3D labels)
    with the right shapes and the checksums the record names; stored advantages match the scores; the pairs
    file refers to known groups. Array files no record refers to are reported as warnings (an interrupted
    export leaves them; the next run overwrites them).
    """
    root = Path(root)
    errors: list[str] = []
    warnings: list[str] = []
    try:
        header = read_header(root)
    except AssetError as exc:
        return ValidationReport(path=str(root), ok=False, errors=[str(exc)])
    path = root / MANIFEST
    if not path.exists():
        # an export stopped before its first group leaves only its header: say so, and that re-running it completes
        # it (the bare "missing" read as a folder broken beyond repair)
        # (with no group written, a re-run takes the folder over whatever changed: the plain advice holds)
        unfinished = header.counts.get("finished") is False
        notes = ["the last export into this folder did not finish (interrupted or still running) before its first "
                 "group: nothing written yet; re-run the same export command to continue"] if unfinished else []
        # an export whose VLM endpoint could not be used from its first group stops with no group written: what
        # failed (and what was never tried) is in failures.jsonl, and "interrupted or still running" alone hid it
        failed = open_failures(root, ())
        if failed:
            notes.append(_failed_warning(root, failed, written=False))
        # unfinished, it reads as the export interrupted after some groups does (a warning to re-run), not as a
        # broken folder; it still fails (exit 1), as a finished export that wrote no group does: validate passes a
        # folder finetune can train on, and finetune refuses this one. Finished, the missing manifest lost its groups
        error = (f"{path}: missing: the export has not written its first group yet, so there is nothing to "
                 "finetune on" if unfinished else f"{path}: missing")
        return ValidationReport(path=str(root), ok=False, errors=[error], warnings=notes)
    seen: dict[str, tuple[int, str | None]] = {}  # group id → (its first line, its record's checksum)
    records: list[GroupRecord] = []
    stopped = False
    unreadable = 0  # lines that are no record
    with open(path, encoding="utf-8", errors="replace") as fh:  # a non-UTF-8 line is reported, see read_manifest
        for lineno, line in enumerate(fh, 1):
            if len(errors) >= max_errors:  # also after lines that were no record at all (not JSON, a bad checksum):
                errors.append("… too many errors, stopped")  # a garbled manifest listed every one of its lines
                stopped = True
                break
            where = f"{MANIFEST}:{lineno}"
            if not line.strip():
                continue
            # one error per line (a torn last line was two, "torn" and "not valid JSON"); a line that is no record
            # is left out by the reader: counted for the warning below
            torn = "torn last line (no newline), " if not line.endswith("\n") else ""
            unreadable += 1
            try:
                raw = json.loads(line)
            except (ValueError, RecursionError):  # a RecursionError stopped validate with no file named (and so
                # did an integer of over 4,300 digits: a bare ValueError, not a JSONDecodeError)
                errors.append(f"{where}: {torn}not valid JSON")
                continue
            try:
                summed = isinstance(raw, dict) and raw.get("checksum") == record_checksum(raw)
            except RecursionError:  # nested deeper than the checksum walks (a few hundred levels): no record is
                summed = False
            if not summed:
                errors.append(f"{where}: {torn}checksum mismatch")
                continue
            try:
                rec = GroupRecord.model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                errors.append(f"{where}: {torn}schema: {'.'.join(map(str, first['loc']))}: {first['msg']}")
                continue
            unreadable -= 1
            if torn:  # the record is whole, only its newline is missing: the reader takes it
                errors.append(f"{where}: torn last line (no newline; its record is complete and finetune reads it)")
            if rec.format_version != header.format_version:
                errors.append(
                    f"{where}: format_version {rec.format_version} != header {header.format_version}"
                )
            if rec.group_id in seen:
                at, checksum = seen[rec.group_id]
                errors.append(f"{where}: duplicate group_id {rec.group_id} (first on line {at}; " + (
                    "the same record: finetune reads it once)" if checksum == rec.checksum else
                    "another record: finetune refuses the dataset, remove the wrong line)"))
                continue
            seen[rec.group_id] = (lineno, rec.checksum)
            records.append(rec)
            if rec.num_hypotheses != header.num_generations:
                errors.append(f"{where}: {rec.num_hypotheses} hypotheses, the header says {header.num_generations}")
            other = [d for d in header_mismatch(header, rec) if not d.startswith("num_hypotheses=")]
            if other:
                errors.append(f"{where}: a record of another export ({', '.join(other)}; the header differs)")
            errors.extend(f"{where}: {e}" for e in _check_record_files(root, rec))
            if not advantages_match(rec):
                errors.append(f"{where}: advantages do not match the overall scores (edited, or written by another "
                              "version; finetune recomputes them from the scores and does not read these)")
            if len(errors) >= max_errors:
                errors.append("… too many errors, stopped")
                stopped = True
                break
    if unreadable:  # what finetune does with them: it trains on the rest, and says so; validate's errors said nothing
        warnings.append(f"{unreadable} {MANIFEST} line(s) hold no complete record (torn by an interrupted write, or "
                        "damaged): finetune skips them and trains on the groups that read; the export's next run "
                        "drops them")
    # Stopped at max_errors, the records after that line were never checked: their array files, pairs and failures
    # read as orphans, as pairs of unknown groups (one error per pair, past the cap: a dataset moved without its
    # groups/ folder listed hundreds of "refers to an unknown group" lines, and "pairs.jsonl: not the pairs of the
    # manifest's groups") and as failed inputs, though the manifest holds those groups. They are taken from the
    # whole manifest then, and the pairs are counted, not checked.
    known = records if not stopped else read_manifest(root)
    referenced = {r.condition.path for r in known} | {r.hypotheses.path for r in known}
    if (root / GROUPS).is_dir():
        orphans = [p for p in (root / GROUPS).glob("*.npz") if f"{GROUPS}/{p.name}" not in referenced]
        if orphans:
            warnings.append(f"{len(orphans)} array file(s) not referenced by the manifest (interrupted run)")
    n_pairs = 0
    pairs: list | None = None  # the file's records that parse; None without a file
    if (root / PAIRS).exists():
        pairs = []
        for lineno, line in enumerate((root / PAIRS).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if stopped:
                n_pairs += 1
                continue
            try:
                pair = json.loads(line)
                pairs.append(pair)
                ok = pair["group_id"] in seen and {"prompt", "chosen", "rejected"} <= set(pair)
            except (ValueError, RecursionError, KeyError, TypeError):  # ValueError: JSONDecodeError, huge integers
                ok = False
            if not ok:
                errors.append(f"{PAIRS}:{lineno}: malformed or refers to an unknown group")
            n_pairs += 1
    if header.counts.get("finished") is not False and not stopped:  # an export writes the pairs when it finishes
        expected_pairs = pair_records(records)
        if pairs is None and expected_pairs:
            errors.append(f"{PAIRS}: missing ({len(expected_pairs)} pairs expected; re-run the export to write it; "
                          "finetune does not read it, TRL-style trainers do)")
        elif pairs is not None and pairs != expected_pairs:
            errors.append(f"{PAIRS}: not the pairs of the manifest's groups (edited or out of date; re-run the "
                          "export to rewrite it)")
    written = header.counts.get("groups")
    if header.counts.get("finished") is True and isinstance(written, int) and written != len(records) and not stopped:
        errors.append(f"{MANIFEST}: {len(records)} group(s), but the finished export wrote {written} groups (lines "
                      "lost or added since; re-run the export to restore them)")
    if not records:
        errors.append(f"{MANIFEST}: no groups (nothing to finetune on)")
    if header.counts.get("finished") is False:
        warnings.append(_UNFINISHED)
    failed = open_failures(root, {r.group_id for r in known})
    if failed:
        warnings.append(_failed_warning(root, failed))
    zero = sum(r.zero_variance for r in records)
    return ValidationReport(
        path=str(root),
        ok=not errors,
        groups=len(records),
        hypotheses=sum(r.num_hypotheses for r in records),
        pairs=n_pairs,
        zero_variance_share=zero / max(len(records), 1),
        errors=errors,
        warnings=warnings,
    )


def open_failures(root: str | Path, present: Iterable[str]) -> list[str]:
    """The group ids of ``failures.jsonl`` not in the dataset (``present``), each once, in file order.

    Any record counts, whatever its stage or other fields (an export may add some): a group it names failed. An
    interrupted export leaves the file as appended (a group that failed on two runs is two lines; one that failed,
    then was written by the interrupted run, is still listed), so counting its lines said "N input(s) failed and
    are not in the dataset" of groups it holds. read_jsonl drops a torn last line (appended: a kill mid-write
    leaves one)."""
    present = set(present)
    # a line that names no group (edited by hand into ``{}``) is dropped, as the export's own reader drops it: it
    # was counted as a failed input called "None"
    ids = (f["group_id"] for f in read_jsonl(Path(root) / FAILURES) if isinstance(f.get("group_id"), str))
    return list(dict.fromkeys(g for g in ids if g not in present))


def _failed_warning(root: Path, failed: list[str], written: bool = True) -> str:
    """``written``: the folder holds groups (a re-run after the memory changed is refused then; into a folder that
    holds none it takes the folder over, whatever changed)."""
    return (f"{len(failed)} input(s) failed and are not in the dataset ({FAILURES}"
            f"{not_attempted_note(root, failed)}); {RETRY_ADVICE if written else RETRY}")


def not_attempted_note(root: str | Path, failed: list[str]) -> str:
    """``"; K of them …"`` when some of the open failures ``failed`` (:func:`open_failures`) are groups the export
    never tried (its latest record's stage ``not_attempted``: it stopped on an unusable VLM endpoint), else "".
    They were counted as failed inputs with nothing else said, so 250 groups never sent read as 250 that failed."""
    latest = {f["group_id"]: f for f in read_jsonl(Path(root) / FAILURES) if isinstance(f.get("group_id"), str)}
    skipped = [latest[g] for g in failed if latest.get(g, {}).get("stage") == "not_attempted"]
    if not skipped:
        return ""
    # a Chroma memory server that stopped answering stops an export as an unusable VLM endpoint does
    what = ("its memory server" if str(skipped[-1].get("endpoint_unusable") or "").startswith("the memory server")
            else "its VLM endpoint")
    return (f"; {len(skipped)} of them were not attempted, the export having stopped because {what} could not "
            f"be used, and {len(failed) - len(skipped)} were tried and failed")


def _check_record_files(root: Path, rec: GroupRecord) -> list[str]:
    errs = []
    for ref, kind in ((rec.condition, "condition"), (rec.hypotheses, "hypotheses")):
        p = root / ref.path
        if not p.exists():
            errs.append(f"{kind} file {ref.path} missing")
            continue
        try:
            arrays = load_npz(p)
            if kind == "condition":
                check_condition(arrays, ref.path)
            else:
                _, d = check_hypotheses(arrays, ref.path, rec.num_hypotheses)
                if d != rec.x_dim:
                    errs.append(f"{ref.path}: x0 width {d} != x_dim {rec.x_dim}")
        except AssetError as exc:
            errs.append(str(exc))
            continue
        if arrays_checksum(arrays) != ref.sha256:
            errs.append(f"{ref.path}: checksum mismatch")
    return errs


# ------------------------------------------------------------------------------------------- reader


class GroupPreferenceDataset(torch.utils.data.Dataset):
    """Reads an export folder; item ``i`` is one scored group.

    Each item: ``group_id``, ``keypoints (17,3)`` px + conf, ``K (3,3)``, ``image_size (2,)``, ``x0 (N,D)``,
    ``overall (N,)``, ``axes (N,3)`` (motion_structure, physical_feasibility, image_alignment) and
    ``advantages (N,)``. Only the allow-listed keys are ever read: a file holding anything else — above all a
    3D label such as ``joints3d`` — is refused with an :class:`AssetError`. ``verify`` checks array checksums.
    Refused too: a record of another export, two different records of one group id. Kept for the caller to report
    (finetune notes them; validate calls them errors): ``skipped_lines`` (manifest lines that are no record: torn,
    damaged), ``repeated_lines`` (a record repeated as is, read once), ``stale_advantages`` (group ids whose stored
    advantages are not those of their scores; finetune recomputes them).
    """

    def __init__(self, root: str | Path, verify: bool = True, skip_zero_variance: bool = False):
        self.root = Path(root)
        self.header = read_header(self.root)
        self.records, self.skipped_lines, repeats = scan_manifest(self.root)
        differing = [(line, at, gid) for line, at, gid, same in repeats if not same]
        if differing:
            # two different records of one group (scores of two critiques, a manifest joined with another): which
            # one is right is unknowable, and the reader trained on the first without a word while validate
            # called the dataset invalid. A repeat of the same record is harmless: read once, noted by finetune.
            line, at, gid = differing[0]
            raise AssetError(f"{self.root / MANIFEST}: group {gid} is on line {at} and again, with other content, "
                             f"on line {line} ({len(differing)} such repeat(s)): which one to train on is unknown; "
                             f"`hmrcritic export validate {self.root}` lists them; remove the wrong lines")
        self.repeated_lines = [line for line, *_ in repeats]
        for rec in self.records:
            # validate refuses such a record ("a record of another export"), and the finetuner trained on it: groups
            # sampled by another model (or scored by another judge, drawn with another seed or G) under a header
            # that names this export's
            # (another group size is not: validate names it apart, and finetune trains on the smallest G, saying so)
            diff = [d for d in header_mismatch(self.header, rec) if not d.startswith("num_hypotheses=")]
            if diff:
                raise AssetError(f"{self.root / MANIFEST}: group {rec.group_id} is a record of another export "
                                 f"({', '.join(diff)}; {HEADER} differs); `hmrcritic export validate {self.root}` "
                                 "lists them")
        # groups whose stored advantages are not those of their scores (validate's error): never read by finetune,
        # which recomputes them from the scores it draws, so the run is well defined; it says so
        self.stale_advantages = [r.group_id for r in self.records if not advantages_match(r)]
        read_ids = {r.group_id for r in self.records}
        if skip_zero_variance:
            self.records = [r for r in self.records if not r.zero_variance]
            if read_ids and not self.records:
                # the groups are there, each scored alike: "no complete groups" sent the user looking for a torn or
                # unfinished export (and the failures note below, for inputs that failed, blamed those)
                raise AssetError(f"{self.root / MANIFEST}: all {len(read_ids)} group(s) are zero-variance (every "
                                 "hypothesis of a group scored alike), and skip_zero_variance=True skips them: no "
                                 "preference to learn from; read them with skip_zero_variance=False, or export with "
                                 "a judge or memory that tells the hypotheses apart")
        if not self.records:
            # an export whose every input failed (a VLM endpoint refused on its last groups: it finishes then, with
            # them as failures) holds none: say so, as the finetune's note does for an export that holds some
            failed = open_failures(self.root, read_ids)
            why = (f"; {len(failed)} input(s) of the export failed and are not in the dataset ({FAILURES}, first: "
                   f"{failed[0]}{not_attempted_note(self.root, failed)}): {RETRY}"
                   ) if failed else ""
            raise AssetError(f"{self.root / MANIFEST}: no complete groups{why}")
        self.verify = verify

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        cond = load_npz(self.root / rec.condition.path)
        hyps = load_npz(self.root / rec.hypotheses.path)
        check_condition(cond, str(self.root / rec.condition.path))
        _, width = check_hypotheses(hyps, str(self.root / rec.hypotheses.path), rec.num_hypotheses)
        if width != rec.x_dim:
            # as validate says it: with verify=False a group file of another kind of model (another width) was read
            # as this dataset's (the items then disagreed in width), and with verify it read "checksum does not match"
            raise AssetError(f"{self.root / rec.hypotheses.path}: x0 has {width} values per hypothesis, the record "
                             f"says x_dim {rec.x_dim} (an array file of another model's export?); `hmrcritic export "
                             f"validate {self.root}` lists such files")
        if self.verify:
            for arrays, ref in ((cond, rec.condition), (hyps, rec.hypotheses)):
                if arrays_checksum(arrays) != ref.sha256:  # name the file that changed, not always the hypotheses
                    raise AssetError(f"{self.root / ref.path}: checksum does not match manifest")
        return {
            "group_id": rec.group_id,
            "keypoints": torch.from_numpy(cond["keypoints"].astype(np.float32)),
            "K": torch.from_numpy(cond["K"].astype(np.float32)),
            "image_size": torch.from_numpy(cond["image_size"].astype(np.int64)),
            "x0": torch.from_numpy(hyps["x0"].astype(np.float32)),
            "overall": torch.tensor([s.overall for s in rec.scores], dtype=torch.float32),
            "axes": torch.tensor([[getattr(s, a) for a in AXES] for s in rec.scores], dtype=torch.float32),
            "advantages": torch.tensor(rec.advantages, dtype=torch.float32),
        }
