"""Session-26 fuzz review: a seeded mutation fuzzer over every reader of what users and servers feed in.

Each reader either returns a valid result or raises an :class:`HMRCriticError` naming the file or field (the VLM
answer readers: :class:`Unparseable`, which the judge retries and then reports as a JudgeError). Valid documents of
each accepted form are mutated — keys deleted, duplicated, retyped; numbers huge, negative, NaN, infinite, -0.0;
lists nested deep; bytes truncated, garbled, BOM-prefixed — with ``random.Random(seed)``: deterministic, so a
failure names the case that reproduces it. The minimised cases that broke a reader are regression tests below.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.errors import HMRCriticError

# ---------------------------------------------------------------------------------------------- the mutator

_DEEP = object()  # stands for a list nested hundreds to thousands deep


def _scalars(rng: random.Random):
    return rng.choice([
        None, True, False, 0, 1, -1, 2, 3, 17, 51, 75, -0.0, 0.5, 1.05, 1e308, -1e308, 5e-324, float("nan"),
        float("inf"), float("-inf"), 10 ** 30, 10 ** 400, -(10 ** 400), "", "x", "7", "7/10", "85/100", "70%", "#2",
        "h1", "N/A", "1e400", "nan", "\ud800", "\x1b[2J", "a" * 300, [], {}, [[]], {"": None}, [None] * 17,
        [[1.0, 2.0, 0.5]] * 17, list(range(51)), {"a": [1, 2]}, _DEEP,
    ])


def _materialise(v, rng: random.Random):
    if v is _DEEP:  # a marker, expanded by dump: a nest that deep is more than copy and repr can walk
        return f"__deep_{rng.choice([50, 300, 900, 2000])}__"
    return copy.deepcopy(v)


def _nodes(doc, path=()):
    """Every (path, value) of a JSON document, the root included."""
    yield path, doc
    if len(path) > 8:  # inside a deep nest: its top is mutation enough
        return
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*path, i))


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def mutate_doc(doc, rng: random.Random, rounds: int = 3):
    """``doc`` with 1..rounds random structural mutations (a copy)."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, rounds)):
        nodes = list(_nodes(doc))[:2000]
        path, value = rng.choice(nodes)
        op = rng.randrange(8)
        if not path:  # the root: retype it or wrap it
            if op < 2:
                doc = _materialise(_scalars(rng), rng)
            elif op < 4:
                doc = [doc] if rng.random() < 0.5 else {"x": doc}
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == 0:  # delete
            del parent[key]
        elif op == 1:  # duplicate (a list entry; a dict value under a new key)
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(value))
            else:
                parent[f"{key}_copy"] = copy.deepcopy(value)
        elif op in (2, 3):  # retype
            parent[key] = _materialise(_scalars(rng), rng)
        elif op == 4 and isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e300:
            parent[key] = rng.choice([value * 1e300, -value, value + 0.5, value * 100, float("nan"), -0.0,
                                      10 ** 400, value - 1, int(value) if math.isfinite(value) else 0])
        elif op == 5 and isinstance(value, list):  # empty it, shorten it, or nest it
            parent[key] = rng.choice([[], value[:-1], value[: len(value) // 2], [value], value * 2])
        elif op == 6 and isinstance(value, dict):
            parent[key] = rng.choice([{}, list(value.values()), {str(i): v for i, v in enumerate(value.values())}])
        elif op == 7 and isinstance(value, str):
            parent[key] = rng.choice(["", value * 50, value[: len(value) // 2], value.upper(), "\ud800" + value])
        else:
            parent[key] = _materialise(_scalars(rng), rng)
    return doc


def dump(doc) -> str:
    """``doc`` as JSON text (NaN and Infinity as Python writes them), with each deep-nest marker expanded."""
    try:
        text = json.dumps(doc)
    except ValueError:  # an int past 4,300 digits: a plain stand-in
        return json.dumps(str(type(doc)))
    return re.sub(r'"__deep_(\d+)__"', lambda m: "[" * int(m.group(1)) + "1" + "]" * int(m.group(1)), text)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte-level damage: truncation, garbage, BOMs, other encodings, a number of thousands of digits."""
    op = rng.randrange(7)
    if op == 0 and data:
        return data[: rng.randrange(len(data))]
    if op == 1 and data:
        i = rng.randrange(len(data))
        return data[:i] + rng.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80", b"}", b"]", b","]) + data[i:]
    if op == 2:
        return b"\xef\xbb\xbf" + data
    if op == 3:
        try:
            return data.decode("utf-8").encode(rng.choice(["utf-16", "utf-32", "utf-16-le"]))
        except UnicodeDecodeError:
            return data
    if op == 4:
        text = data.decode("utf-8", "replace")
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        if digits:
            i = rng.choice(digits)
            return (text[:i] + "9" * rng.choice([400, 5000]) + text[i:]).encode("utf-8")
    if op == 5:
        return b"[" * rng.choice([10, 5000]) + data
    return data


def _named(exc: BaseException, *names: str) -> bool:
    return any(n in str(exc) for n in names)


# ---------------------------------------------------------------------------------------------- keypoint JSON

def _coco17(rng: random.Random, flat=False, flags=False):
    pts = [[round(rng.uniform(50, 600), 2), round(rng.uniform(50, 400), 2),
            rng.choice([0, 1, 2]) if flags else round(rng.uniform(0.3, 1.0), 3)] for _ in range(17)]
    return [v for p in pts for v in p] if flat else pts


def keypoint_documents(rng: random.Random) -> list:
    """One valid document of each accepted keypoint form."""
    body25 = [v for _ in range(25) for v in (round(rng.uniform(50, 600), 1), round(rng.uniform(50, 400), 1), 0.8)]
    coco18 = body25[:54]
    mm = {"keypoints": [p[:2] for p in _coco17(rng)], "keypoint_scores": [round(rng.uniform(0, 3), 2)
                                                                         for _ in range(17)]}
    halpe = [v for _ in range(26) for v in (rng.uniform(50, 600), rng.uniform(50, 400), 0.9)]
    whole = [v for _ in range(133) for v in (rng.uniform(50, 600), rng.uniform(50, 400), 0.9)]
    return [
        _coco17(rng),
        _coco17(rng, flat=True),
        {"keypoints": _coco17(rng, flat=True, flags=True)},
        [{"image_id": 1, "keypoints": _coco17(rng, flat=True), "score": 0.9},
         {"image_id": 1, "keypoints": _coco17(rng, flat=True), "score": 0.5}],
        {"images": [{"id": 1}], "annotations": [{"image_id": 1, "keypoints": _coco17(rng, flat=True, flags=True)}]},
        {"version": 1.3, "people": [{"pose_keypoints_2d": body25}, {"pose_keypoints_2d": body25[::-1]}]},
        {"people": [{"pose_keypoints_2d": coco18}]},
        [mm, mm],
        {"instance_info": [mm]},
        {"keypoints": halpe},
        {"keypoints": whole},
        [_coco17(rng), _coco17(rng)],
    ]


def _check_keypoints(path: Path, image_size) -> str | None:
    """None when the reader kept the contract on ``path``, else what it did wrong."""
    from hmrcritic.hmr.data import read_keypoints_json

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kp = read_keypoints_json(path, image_size=image_size)
    except HMRCriticError as exc:
        return None if _named(exc, str(path)) else f"error without the file name: {exc}"
    except Exception as exc:  # noqa: BLE001 - the property under test
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if kp.shape != (17, 3) or kp.dtype != np.float32 or not np.isfinite(kp).all():
        return f"read as {kp.shape} {kp.dtype} finite={np.isfinite(kp).all()}"
    if not ((kp[:, 2] >= 0) & (kp[:, 2] <= 1)).all():
        return f"confidence outside [0, 1]: {kp[:, 2]}"
    return None


def fuzz_keypoints(tmp_path: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    docs = keypoint_documents(rng)
    failures = []
    for case in range(count):
        doc = rng.choice(docs)
        data = dump(mutate_doc(doc, rng)).encode("utf-8") if rng.random() < 0.8 else dump(doc).encode("utf-8")
        if rng.random() < 0.3:
            data = mutate_bytes(data, rng)
        path = tmp_path / f"kp{case % 7}.json"
        path.write_bytes(data)
        size = rng.choice([None, (640, 480), (1, 1), (10 ** 6, 10 ** 6)])
        if (why := _check_keypoints(path, size)) is not None:
            failures.append(f"case {case} (size {size}): {why}: {data[:300]!r}")
    return failures


def test_keypoint_reader_fuzz(tmp_path):
    assert fuzz_keypoints(tmp_path, seed=26, count=1500) == []


# ---------------------------------------------------------------------------------------------- VLM answers

def critique_answers(rng: random.Random, n: int) -> list:
    """Valid answers of each accepted form, as the objects the endpoint's JSON decodes to."""
    def entry(i, top=10):
        return {"index": i, "overall": round(rng.uniform(0, top), 1), "motion_structure": round(rng.uniform(0, top)),
                "physical_feasibility": round(rng.uniform(0, top), 2), "image_alignment": rng.uniform(0, top),
                "rationale": f"hypothesis {i}: knee fine"}
    return [
        {"scores": [entry(i) for i in range(n)], "summary": "ok", "rules_applied": ["rule-1"]},
        {"scores": [entry(i, 100) for i in range(n)]},
        [{"id": f"#{i + 1}", "score": f"{rng.randint(0, 10)}/10", "comment": "x"} for i in range(n)],
        {"hypotheses": {f"h{i}": {"overall": rng.uniform(0, 1)} for i in range(n)}, "rules_applied": "rule-1, r2"},
        {"results": [{"overall": f"{rng.randint(0, 100)}%"} for _ in range(n)]},
        {"name": "GroupCritique", "arguments": json.dumps({"scores": [entry(i) for i in range(n)]})},
    ]


def as_text(doc, rng: random.Random) -> str:
    """An answer as an endpoint's text: bare JSON, fenced, after prose or reasoning, or loose (Python's words)."""
    body = dump(doc)
    form = rng.randrange(5)
    if form == 1:
        return f"```json\n{body}\n```"
    if form == 2:
        return f"Hypothesis [3] is worst; scores 7 and 8.5.\n{body}\nThat is all."
    if form == 3:
        return f"<think>draft {{\"index\": 0}}</think>{body}"
    if form == 4:
        return body.replace("true", "True").replace("null", "None").replace('"', "'")
    return body


def _check_critique(text: str, n: int) -> str | None:
    from hmrcritic.agent.schema import AXES
    from hmrcritic.agent.vlm import Unparseable, _answer_text, extract_json, normalise_critique

    try:
        crit = normalise_critique(extract_json(_answer_text(text)), n)
    except Unparseable:
        return None
    except Exception as exc:  # noqa: BLE001 - the property under test
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if sorted(s.index for s in crit.scores) != list(range(n)):
        return f"indices {[s.index for s in crit.scores]}"
    for s in crit.scores:
        vals = [s.overall, *(getattr(s, a) for a in AXES)]
        if not all(math.isfinite(v) and 0 <= v <= 10 for v in vals):
            return f"score out of range: {vals}"
    return None


def fuzz_critiques(tmp_path: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    failures = []
    for case in range(count):
        n = rng.choice([1, 2, 3, 5])
        doc = mutate_doc(rng.choice(critique_answers(rng, n)), rng)
        text = as_text(doc, rng)
        if rng.random() < 0.2:
            text = mutate_bytes(text.encode("utf-8", "surrogatepass"), rng).decode("utf-8", "replace")
        if (why := _check_critique(text, n)) is not None:
            failures.append(f"case {case} (n={n}): {why}: {text[:300]!r}")
    return failures


def test_vlm_critique_answer_fuzz(tmp_path):
    assert fuzz_critiques(tmp_path, seed=26, count=1500) == []


def _context(n: int = 3):
    from hmrcritic.agent.judges import JudgeContext
    from hmrcritic.memory.schema import Rule, RuleCondition

    rule = Rule(rule_id="rule-1", text="knee bent backwards", tags=["knee"],
                condition=RuleCondition(measure="joint_limit_deg", comparator=">", threshold=20.0, points=3.0))
    return JudgeContext(group_id="g", num_hypotheses=n, rules=[rule],
                        evidence={"reproj_px": [1.0] * n, "joint_limit_deg": [0.0] * n})


def proposal_answers(rng: random.Random) -> list:
    rule = {"text": "elbow bent past 150 degrees", "tags": ["elbow", "arm"], "measure": "reproj_px",
            "comparator": ">", "threshold": 12.5, "points": 2.0, "axis": "image_alignment", "per": 4.0}
    return [{"rules": [rule, {"text": "hands through the torso", "tags": []}]}, [rule],
            {"arguments": {"rules": [rule]}}]


def _check_proposals(text: str, ctx) -> str | None:
    from hmrcritic.agent.vlm import Unparseable, _answer_text, extract_json, normalise_proposals

    try:
        out = normalise_proposals(extract_json(_answer_text(text)), ctx)
    except Unparseable:
        return None
    except Exception as exc:  # noqa: BLE001 - the property under test
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    for r in out.rules:
        if not r.text.strip() or (r.points is not None and not 0 <= r.points <= 10):
            return f"unusable rule kept: {r}"
    return None


def fuzz_proposals(tmp_path: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    ctx = _context()
    failures = []
    for case in range(count):
        text = as_text(mutate_doc(rng.choice(proposal_answers(rng)), rng), rng)
        if (why := _check_proposals(text, ctx)) is not None:
            failures.append(f"case {case}: {why}: {text[:300]!r}")
    return failures


def test_vlm_rule_proposal_fuzz(tmp_path):
    assert fuzz_proposals(tmp_path, seed=26, count=800) == []


# ---------------------------------------------------------------------------------------------- export datasets

def _dataset(root: Path, groups: int = 2, n: int = 3) -> tuple[dict, list[dict]]:
    """A small valid export folder (header, groups' arrays, manifest, pairs); its header and manifest records."""
    from hmrcritic.agent.schema import HypothesisScore
    from hmrcritic.alignment import dataset as D
    from hmrcritic.io import append_jsonl

    header = D.DatasetHeader(source="test", model_hash="x", judge="builtin", num_generations=n, sample_steps=2,
                             seed=0, x_dim=4, counts={"groups": groups, "finished": True})
    D.write_header(root, header)
    rng = np.random.default_rng(0)
    records = []
    for g in range(groups):
        kp = np.c_[rng.uniform(100, 400, (17, 2)), np.ones(17)]
        K = np.array([[500.0, 0, 256], [0, 500.0, 256], [0, 0, 1]])
        hyps = {"x0": rng.normal(size=(n, 4)).astype(np.float32), "global_orient": np.zeros((n, 3), np.float32),
                "body_pose": np.zeros((n, 69), np.float32), "betas": np.zeros((n, 10), np.float32),
                "transl": np.zeros((n, 3), np.float32)}
        cref, href = D.write_group_arrays(root, f"g{g}", D.condition_arrays(kp, K, (512, 512)), hyps)
        scores = [HypothesisScore(index=i, motion_structure=s, physical_feasibility=s, image_alignment=s, overall=s,
                                  rationale="r") for i, s in enumerate(rng.uniform(0, 10, n).round(2).tolist())]
        rec = D.build_record(group_id=f"g{g}", input_id=f"i{g}", source="test", condition=cref, hypotheses=href,
                             num_hypotheses=n, x_dim=4, scores=scores, judge="builtin", memory_version="m0",
                             model_hash="x", seed=0, group_seed=g)
        line = rec.to_line_dict()
        append_jsonl(root / D.MANIFEST, {k: v for k, v in line.items() if k != "checksum"})
        records.append(line)
    D.write_pairs(root, D.read_manifest(root))
    return header.model_dump(mode="json"), records


def _resummed(doc, rng: random.Random):
    """A mutated record with its checksum made right again (most of the time), so that it reaches the schema."""
    from hmrcritic.io import record_checksum

    if isinstance(doc, dict) and rng.random() < 0.8:
        with contextlib.suppress(ValueError, TypeError, RecursionError):  # not writable as JSON: left as it is
            doc = {**doc, "checksum": record_checksum(doc)}
    return doc


def fuzz_datasets(tmp_path: Path, seed: int, count: int) -> list[str]:
    """parse_manifest_line never raises; validate_dataset reports instead of raising; read_header and the reader
    raise only AssetError naming the folder's files."""
    from hmrcritic.alignment import dataset as D

    rng = random.Random(seed)
    base = tmp_path / "base"
    base.mkdir()
    header, records = _dataset(base)
    pairs = (base / D.PAIRS).read_bytes()
    failures = []
    for case in range(count):
        root = tmp_path / f"d{case % 5}"
        if root.exists():
            for f in (D.HEADER, D.MANIFEST, D.PAIRS):
                (root / f).unlink(missing_ok=True)
        else:
            import shutil

            shutil.copytree(base / D.GROUPS, root / D.GROUPS)
        lines = []
        for rec in records:
            doc = _resummed(mutate_doc(rec, rng), rng) if rng.random() < 0.6 else rec
            lines.append(dump(doc).encode("utf-8"))
        data = b"\n".join(lines) + b"\n"
        if rng.random() < 0.3:
            data = mutate_bytes(data, rng)
        (root / D.MANIFEST).write_bytes(data)
        head = dump(mutate_doc(header, rng) if rng.random() < 0.3 else header).encode("utf-8")
        (root / D.HEADER).write_bytes(mutate_bytes(head, rng) if rng.random() < 0.2 else head)
        (root / D.PAIRS).write_bytes(mutate_bytes(pairs, rng) if rng.random() < 0.3 else pairs)
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                D.parse_manifest_line(line)
            except Exception as exc:  # noqa: BLE001 - the property under test
                failures.append(f"case {case}: parse_manifest_line {type(exc).__name__}: {str(exc)[:150]}: "
                                f"{line[:300]!r}")
        try:
            report = D.validate_dataset(root)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"case {case}: validate_dataset {type(exc).__name__}: {str(exc)[:150]}: {data[:300]!r}")
            continue
        try:
            ds = D.GroupPreferenceDataset(root)
            items = [ds[i] for i in range(len(ds))]
        except HMRCriticError as exc:
            if not _named(exc, str(root)) and "groups/" not in str(exc):
                failures.append(f"case {case}: reader error without the file: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001
            failures.append(f"case {case}: reader {type(exc).__name__}: {str(exc)[:150]}: {data[:300]!r}")
            continue
        if report.ok and len(items) != len(records):
            failures.append(f"case {case}: validate ok, but the reader read {len(items)} of {len(records)} groups")
    return failures


def test_export_dataset_fuzz(tmp_path):
    assert fuzz_datasets(tmp_path, seed=26, count=300) == []


# ---------------------------------------------------------------------------------------------- hypotheses

def _hypothesis_arrays(rng: random.Random, n: int) -> dict:
    g = np.random.default_rng(rng.randrange(1 << 30))
    layout = rng.randrange(3)
    if layout == 0:
        return {"global_orient": g.normal(size=(n, 3)).astype(np.float32),
                "body_pose": (g.normal(size=(n, 69)) * 0.2).astype(np.float32),
                "betas": g.normal(size=(n, 10)).astype(np.float32), "transl": np.tile([0.0, 0.2, 5.0], (n, 1)),
                "x0": g.normal(size=(n, 12)), "keypoints": g.normal(size=(17, 3))}
    if layout == 1:  # AMASS-style poses, one shared betas row, fewer betas
        return {"poses": g.normal(size=(n, 72)) * 0.2, "betas": g.normal(size=(1, 8)),
                "transl": np.tile([0.0, 0.0, 4.0], (n, 1))}
    return {"global_orient": g.normal(size=(n, 1, 3)), "body_pose": g.normal(size=(n, 23, 3)) * 0.1,
            "betas": np.zeros((n, 16)), "transl": np.array([[0.0, 0.0, 3.0]])}


def mutate_arrays(arrays: dict, rng: random.Random) -> dict:
    arrays = dict(arrays)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(sorted(arrays) + ["poses", "global_orient"])
        a = np.asarray(arrays.get(key, np.zeros((2, 3))))
        op = rng.randrange(9)
        if a.dtype.kind not in "biufc" and op in (3, 6):  # text and bytes arrays: numbers do not go in
            op = 0
        if op == 0:
            arrays.pop(key, None)
        elif op == 1:
            arrays[key] = a.reshape(-1) if rng.random() < 0.5 else a[None]
        elif op == 2 and a.dtype.kind in "biuf":
            arrays[key] = a.astype(rng.choice([np.int8, np.int64, np.float16, np.float64, np.complex64, np.bool_,
                                               np.uint64, "U3", "S2", "datetime64[s]"]))
        elif op == 3 and a.size:
            b = a.astype(np.float64).copy()
            b.flat[rng.randrange(b.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e39, -0.0, 1e5, 60])
            arrays[key] = b
        elif op == 4:
            arrays[key] = a[: rng.randrange(a.shape[0] + 1)] if a.ndim else a
        elif op == 5:
            arrays[key] = np.zeros(rng.choice([(0,), (0, 3), (3, 0), (2000, 3), (), (1, 1, 1, 1), (2, 75)]))
        elif op == 6:
            arrays[key] = np.repeat(a, 2, axis=-1) if a.ndim else a
        elif op == 7:
            arrays[key] = np.array(rng.choice([1.0, "x", b"y", True]))
        else:
            arrays[key] = a.T
    return arrays


def _check_hypotheses(source, name: str) -> str | None:
    from hmrcritic.agent.api import load_hypotheses

    try:
        out = load_hypotheses(source)
    except HMRCriticError as exc:
        return None if _named(exc, name) else f"error without the source: {exc}"
    except Exception as exc:  # noqa: BLE001 - the property under test
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    n = out["body_pose"].shape[0]
    shapes = {k: v.shape for k, v in out.items()}
    if shapes != {"global_orient": (n, 3), "body_pose": (n, 69), "betas": (n, 10), "transl": (n, 3)}:
        return f"read with shapes {shapes}"
    if not all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values()):
        return "read with values that are not finite float32"
    return None


def fuzz_hypotheses(tmp_path: Path, seed: int, count: int) -> list[str]:
    with warnings.catch_warnings():  # casts that overflow: what the reader is fed here
        warnings.simplefilter("ignore", RuntimeWarning)
        return _fuzz_hypotheses(tmp_path, seed, count)


def _fuzz_hypotheses(tmp_path: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    failures = []
    for case in range(count):
        arrays = _hypothesis_arrays(rng, rng.choice([1, 2, 4]))
        if rng.random() < 0.85:
            arrays = mutate_arrays(arrays, rng)
        if rng.random() < 0.25:  # the Python API: a dict of arrays or lists
            source = {k: (v.tolist() if rng.random() < 0.3 else v) for k, v in arrays.items()}
            if source and rng.random() < 0.3:  # a ragged list
                k = rng.choice(sorted(source))
                source[k] = [[1.0, 2.0], [3.0]]
            why = _check_hypotheses(source, "hypotheses")
        else:
            path = tmp_path / f"h{case % 5}.npz"
            buf = io.BytesIO()
            np.savez(buf, **arrays) if rng.random() < 0.5 else np.savez_compressed(buf, **arrays)
            data = buf.getvalue()
            if rng.random() < 0.15:
                data = mutate_bytes(data, rng)
            path.write_bytes(data)
            why = _check_hypotheses(path, str(path))
        if why is not None:
            shapes = {k: (np.shape(v), np.asarray(v).dtype.str) for k, v in arrays.items()}
            failures.append(f"case {case}: {why}: {shapes}")
    return failures


def test_hypotheses_reader_fuzz(tmp_path):
    assert fuzz_hypotheses(tmp_path, seed=26, count=600) == []


# ---------------------------------------------------------------------------------------------- memory import

def fuzz_memory_import(tmp_path: Path, seed: int, count: int) -> list[str]:
    """An import either merges or raises InputError naming the file, with nothing written (the version unmoved)."""
    from hmrcritic.memory.store import MemoryStore

    rng = random.Random(seed)
    source = MemoryStore(tmp_path / "source")
    exported = tmp_path / "export.json"
    source.export_json(exported)
    doc = json.loads(exported.read_text())
    doc["explored_on"] = {"splits": {"train": {"group_ids": ["train-000001", "train-000002"]}}}
    doc["explore_progress"] = {"round": 2}
    target = MemoryStore(tmp_path / "target")
    failures = []
    for case in range(count):
        data = dump(mutate_doc(doc, rng, rounds=2)).encode("utf-8")
        if rng.random() < 0.2:
            data = mutate_bytes(data, rng)
        path = tmp_path / f"import{case % 3}.json"
        path.write_bytes(data)
        before = target.version()
        try:
            target.import_json(path)
        except HMRCriticError as exc:
            if not _named(exc, str(path)):
                failures.append(f"case {case}: error without the file: {exc}")
            elif target.version() != before:
                failures.append(f"case {case}: refused ({exc}) after writing to the memory")
        except Exception as exc:  # noqa: BLE001 - the property under test
            failures.append(f"case {case}: {type(exc).__name__}: {str(exc)[:200]}: {data[:300]!r}")
    return failures


def test_memory_import_fuzz(tmp_path):
    assert fuzz_memory_import(tmp_path, seed=26, count=100) == []


# ---------------------------------------------------------------------------------------------- regressions
# Each is a minimised case one of the fuzzers above found; each failed before its fix.

def test_a_keypoint_value_past_float32_range_is_refused_not_returned_as_inf(tmp_path):
    """1e308 is finite as JSON reads it (float64) and passed the NaN/inf check; the keypoints are returned as
    float32, where it is inf: the reader promised finite keypoints and handed one on silently."""
    from hmrcritic.hmr.data import read_keypoints_json

    pts = [[100.0 + 10 * i, 200.0 + 5 * i, 0.9] for i in range(17)]
    pts[5][1] = 1e308
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(pts))
    with pytest.raises(HMRCriticError, match=r"kp\.json: keypoint 5 \(left_shoulder\) holds a coordinate too large"):
        read_keypoints_json(path)
    # hidden, or outside a given image, it is read as before: a hidden point
    with pytest.warns(UserWarning, match="outside the 640×480 image"):
        assert read_keypoints_json(path, image_size=(640, 480))[5].tolist() == [0.0, 0.0, 0.0]
    pts[5][2] = 0.0
    path.write_text(json.dumps(pts))
    assert read_keypoints_json(path)[5].tolist() == [0.0, 0.0, 0.0]


def test_a_coco_annotation_with_a_list_image_id_is_read_not_a_type_error(tmp_path):
    """A COCO annotation file whose image_id is a list raised "unhashable type: 'list'"; it is one image's."""
    from hmrcritic.hmr.data import read_keypoints_json

    kps = [v for i in range(17) for v in (100.0 + 10 * i, 200.0 + 5 * i, 2)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": [1], "keypoints": kps}]}))
    kp = read_keypoints_json(path)
    assert kp.shape == (17, 3) and (kp[:, 2] == 1.0).all()
    path.write_text(json.dumps({"annotations": [{"image_id": [1], "keypoints": kps},
                                                {"image_id": {"id": 2}, "keypoints": kps}]}))
    with pytest.raises(HMRCriticError, match="ann.json: COCO annotation file with keypoints for 2 images"):
        read_keypoints_json(path)


@pytest.mark.parametrize("field,value", [("measure", ["reproj_px"]), ("measure", {"a": 1}), ("tags", 17),
                                         ("tags", 0.5), ("tags", True)])
def test_a_proposed_rule_with_an_odd_measure_or_tags_is_read(field, value):
    """A measure that is a list/object raised "unhashable type", tags that are a number "not iterable": the judge
    caught the TypeError as "malformed answer ... not a valid chat completion", told the model so on the retry and
    failed the group, although the rule's text was usable."""
    from hmrcritic.agent.vlm import normalise_proposals

    rule = {"text": "elbow bent past 150 degrees", "tags": ["elbow"], "measure": "reproj_px", "comparator": ">",
            "threshold": 12.5, "points": 2.0, field: value}
    out = normalise_proposals({"rules": [rule]}, _context())
    assert [r.text for r in out.rules] == ["elbow bent past 150 degrees"]
    if field == "measure":
        assert out.rules[0].measure is None and out.rules[0].points is None  # text only, as an unknown measure is
    else:
        assert out.rules[0].tags == [] and out.rules[0].measure == "reproj_px"


def test_a_proposed_rule_with_one_tag_as_a_string_keeps_the_tag():
    """``"tags": "elbow"`` was iterated into ["e", "l", "b", "o", "w"] and stored with the rule."""
    from hmrcritic.agent.vlm import normalise_proposals

    out = normalise_proposals({"rules": [{"text": "elbow bent past 150 degrees", "tags": "elbow"}]}, _context())
    assert out.rules[0].tags == ["elbow"]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_manifest_line_nested_hundreds_deep_is_a_damaged_line(tmp_path):
    """json reads a line nested 500 deep, and the checksum's walk of it raised RecursionError out of
    parse_manifest_line: read_manifest, validate and the finetune's reader all stopped with a traceback."""
    from hmrcritic.alignment import dataset as D

    _, records = _dataset(tmp_path)
    line = f'{{"group_id": "g9", "scores": {_nested(500)}}}'
    assert D.parse_manifest_line(line) is None
    with open(tmp_path / D.MANIFEST, "a") as fh:
        fh.write(line + "\n")
    assert [r.group_id for r in D.read_manifest(tmp_path)] == ["g0", "g1"]
    report = D.validate_dataset(tmp_path)
    assert not report.ok and report.groups == 2
    assert report.errors == [f"{D.MANIFEST}:3: checksum mismatch"]
    assert len(D.GroupPreferenceDataset(tmp_path)) == 2


def test_a_manifest_or_pairs_line_with_a_number_thousands_of_digits_long_is_damaged(tmp_path):
    """Python refuses to parse an integer of over 4,300 digits with a bare ValueError (not a JSONDecodeError):
    it escaped the manifest readers and validate, from the manifest and from pairs.jsonl."""
    from hmrcritic.alignment import dataset as D

    _dataset(tmp_path)
    line = '{"group_id": "g9", "seed": ' + "9" * 5000 + "}"
    assert D.parse_manifest_line(line) is None
    with open(tmp_path / D.MANIFEST, "a") as fh:
        fh.write(line + "\n")
    with open(tmp_path / D.PAIRS, "a") as fh:
        fh.write(line + "\n")
    assert len(D.read_manifest(tmp_path)) == 2
    report = D.validate_dataset(tmp_path)
    assert f"{D.MANIFEST}:3: not valid JSON" in report.errors
    assert any(e.startswith(f"{D.PAIRS}:") and "malformed" in e for e in report.errors)


def test_hypotheses_given_as_ragged_lists_are_an_input_error():
    """A dict of lists whose rows differ in length raised numpy's bare "inhomogeneous shape" ValueError."""
    from hmrcritic.agent.api import load_hypotheses

    hyps = {"global_orient": [[0.0, 0.0, 0.0], [0.0, 0.0]], "body_pose": np.zeros((2, 69)),
            "betas": np.zeros((2, 10)), "transl": [[0.0, 0.0, 5.0]] * 2}
    with pytest.raises(HMRCriticError, match="hypotheses: global_orient is not a regular array of numbers"):
        load_hypotheses(hyps)
    # an extra key is ignored unread, as in a file (a ragged one refused the whole dict)
    hyps["global_orient"] = np.zeros((2, 3))
    hyps["keypoints"] = [[1.0, 2.0], [3.0]]
    assert load_hypotheses(hyps)["body_pose"].shape == (2, 69)


def _export(tmp_path: Path) -> dict:
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "source").export_json(tmp_path / "export.json")
    return json.loads((tmp_path / "export.json").read_text())


def test_a_memory_import_with_an_embedding_past_float_range_is_read(tmp_path):
    """A rule's stored embedding holding 10**400 (an integer, as JSON may write one) raised OverflowError out of
    the import; such a vector is unusable and the rule is re-embedded, like any other unusable vector."""
    from hmrcritic.memory.store import MemoryStore

    doc = _export(tmp_path)
    doc["rules"][0]["embedding"] = [10 ** 400] * len(doc["rules"][0]["embedding"])
    doc["rules"][0]["rule_id"] = "imported-rule"
    (tmp_path / "in.json").write_text(json.dumps(doc))
    target = MemoryStore(tmp_path / "target")
    assert target.import_json(tmp_path / "in.json")["rules_added"] == 1
    assert "imported-rule" in {r.rule_id for r in target.rules.all()}


def test_a_memory_import_with_a_number_thousands_of_digits_long_is_an_input_error(tmp_path):
    """json.loads raises a bare ValueError (not a JSONDecodeError) for an integer past 4,300 digits."""
    from hmrcritic.memory.store import MemoryStore

    text = json.dumps(_export(tmp_path)).replace('"schema": 1', '"schema": ' + "1" * 5000, 1)
    (tmp_path / "in.json").write_text(text)
    target = MemoryStore(tmp_path / "target")
    before = target.version()
    with pytest.raises(HMRCriticError, match=r"memory import: .*in\.json is not a memory export"):
        target.import_json(tmp_path / "in.json")
    assert target.version() == before


def test_a_scene_id_with_thousands_of_digits_is_no_split_scene():
    """An explored_on.json id "train-<5000 digits>" (an imported memory's ids are any text) raised Python's
    int-parsing ValueError out of split_scene, and so out of the learning curve's check of explored scenes."""
    from hmrcritic.agent.groups import split_scene

    assert split_scene("train-" + "1" * 5000) is None
    assert split_scene("test-000003") == ("test", 3)


def fuzz_images(tmp_path: Path, seed: int, count: int) -> list[str]:
    """read_image on damaged PNG/JPEG/GIF/TIFF/BMP/WebP bytes (flipped bytes, truncation): an RGB uint8 array or
    an InputError naming the file."""
    from PIL import Image

    from hmrcritic.hmr.data import read_image

    rng = random.Random(seed)
    arr = (np.random.default_rng(seed).random((24, 32, 3)) * 255).astype(np.uint8)
    bases = []
    for fmt, im in [("PNG", Image.fromarray(arr)), ("JPEG", Image.fromarray(arr)),
                    ("GIF", Image.fromarray(arr).convert("P")), ("TIFF", Image.fromarray(arr)),
                    ("BMP", Image.fromarray(arr)), ("WEBP", Image.fromarray(arr)),
                    ("PNG", Image.fromarray(arr[..., 0].astype(np.uint16) * 250)),
                    ("PNG", Image.fromarray(arr).convert("RGBA")),
                    ("TIFF", Image.fromarray(arr[..., 0].astype(np.float32) * 1e30))]:
        buf = io.BytesIO()
        im.save(buf, fmt)
        bases.append(buf.getvalue())
    failures = []
    path = tmp_path / "image.png"
    with warnings.catch_warnings():  # PIL's and numpy's warnings on broken files: what is fed in here
        warnings.simplefilter("ignore")
        for case in range(count):
            data = bytearray(rng.choice(bases))
            if rng.random() < 0.3:
                data = data[: rng.randrange(len(data))]
            else:
                for _ in range(rng.randint(1, 8)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(bytes(data))
            try:
                img = read_image(path)
            except HMRCriticError as exc:
                if not _named(exc, str(path)):
                    failures.append(f"case {case}: error without the file: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - the property under test
                failures.append(f"case {case}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                failures.append(f"case {case}: read as {img.shape} {img.dtype}")
    return failures


def test_image_reader_fuzz(tmp_path):
    assert fuzz_images(tmp_path, seed=26, count=600) == []


# ---------------------------------------------------------------------------------------------- split folders

def _split_folder(root: Path, n: int = 3) -> dict:
    """A split folder as generate_split leaves it (one shard of ``n`` scenes); its manifest."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "shard_000.npz", sample_id=np.array([f"test-{i:06d}" for i in range(n)]),
             keypoints=np.c_[rng.uniform(10, 200, (n * 17, 2)), np.ones(n * 17)].reshape(n, 17, 3),
             K=np.tile(np.array([[256.0, 0, 128], [0, 256.0, 128], [0, 0, 1]]), (n, 1, 1)),
             image_size=np.tile([256, 256], (n, 1)), global_orient=np.zeros((n, 3)), body_pose=np.zeros((n, 69)),
             betas=np.zeros((n, 10)), transl=np.tile([0.0, 0.0, 4.0], (n, 1)), category=np.zeros(n, np.int64))
    manifest = {"split": "test", "n": n, "seed": 2, "has_labels": True, "generator_version": 1,
                "shards": [{"file": "shard_000.npz", "n": n}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def fuzz_split_manifests(tmp_path: Path, seed: int, count: int) -> list[str]:
    """A split whose manifest.json is damaged: opening it and reading a scene give a Sample or an AssetError."""
    from hmrcritic.hmr.data import SceneSet

    rng = random.Random(seed)
    folder = tmp_path / "test"
    manifest = _split_folder(folder)
    failures = []
    for case in range(count):
        data = dump(mutate_doc(manifest, rng)).encode("utf-8")
        if rng.random() < 0.25:
            data = mutate_bytes(data, rng)
        (folder / "manifest.json").write_bytes(data)
        try:
            scenes = SceneSet(folder)
            if len(scenes):
                scenes[rng.randrange(len(scenes))]
        except (HMRCriticError, IndexError) as exc:  # IndexError: an index past the end, as for any sequence
            if isinstance(exc, HMRCriticError) and not _named(exc, str(folder)) and "split" not in str(exc):
                failures.append(f"case {case}: error without the folder: {exc}")
        except Exception as exc:  # noqa: BLE001 - the property under test
            failures.append(f"case {case}: {type(exc).__name__}: {str(exc)[:200]}: {data[:300]!r}")
    return failures


def test_split_manifest_fuzz(tmp_path):
    assert fuzz_split_manifests(tmp_path, seed=26, count=600) == []


@pytest.mark.parametrize("text", ['{"split": "test", "has_labels": true, "shards": [{"file": "shard_000.npz", '
                                  '"n": Infinity}]}',
                                  '{"split": "test", "has_labels": true, "shards": [{"file": "shard_000.npz", '
                                  '"n": 1e300}]}',
                                  "[" * 5000 + "]" * 5000])
def test_a_split_manifest_with_an_impossible_count_or_nesting_is_an_asset_error(tmp_path, text):
    """A shard count of Infinity raised OverflowError from int(), one of 1e300 from len() (an index-sized
    integer), a manifest nested 5,000 deep RecursionError from json: each out of every command reading the split."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet

    folder = tmp_path / "test"
    _split_folder(folder)
    (folder / "manifest.json").write_text(text)
    with pytest.raises(AssetError, match=r"test/manifest\.json: (not a split manifest|unreadable split manifest)"):
        len(SceneSet(folder))


def test_a_stream_with_an_infinite_chunk_index_is_read_as_the_page_it_is():
    """A server-sent stream whose chunk index is Infinity (json reads it; int() of it is an OverflowError) raised
    out of the HTTP client's reading of the answer, and out of ``VLMJudge.critique`` as a bare OverflowError (not
    among the errors its retry loop turns into a JudgeError). It is a 200 that is no completion, as other odd
    streams are: a 502 naming the body, retried and then a JudgeError."""
    from openai_stub_server import JSONAnswerServer

    from hmrcritic.agent.vlm import _http_client

    data = b'data: {"choices": [{"index": Infinity, "delta": {"content": "x"}}]}\n\ndata: [DONE]\n\n'
    with JSONAnswerServer(lambda body: (200, data, "text/event-stream")) as srv:
        client = _http_client(srv.url)
        try:
            response = client.post(f"{srv.url}/chat/completions", json={"model": "m"})
        finally:
            client.close()
    assert response.status_code == 502 and "text/event-stream, not JSON" in response.text
