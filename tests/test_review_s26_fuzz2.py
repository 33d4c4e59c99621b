"""Session-26 fuzz review, part 2: the files hmrcritic writes and reads back (checkpoints, a finetune's resume state
and log, trace JSONL, scores.json, the exploration sidecars, a learning curve's partial file, body-model files,
settings from the environment).

Each reader either returns a valid result or raises an :class:`HMRCriticError` naming the file (or variable) — no
bare TypeError / KeyError / OverflowError / RecursionError / IsADirectoryError traceback, no silent wrong read (a
flipped byte in a checkpoint's weights loaded as other weights), and a resume that cannot read its state keeps it.
Real files of each part are mutated with ``random.Random(seed)`` (deterministic: a failure names the case that
reproduces it); the minimised cases that broke a reader are regression tests of their own below.
(``test_review_s26_fuzz.py`` covers the inputs users and servers feed in; its JSON mutator is reused here.)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import struct
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_finetune import TINY, write_dataset
from test_review_s26_fuzz import dump, mutate_doc

from hmrcritic.errors import HMRCriticError

# ------------------------------------------------------------------------------------------------ helpers


def _flip(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    for _ in range(rng.randint(1, 6)):
        b[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
    return bytes(b)


def mutate_file_bytes(data: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        return data[:rng.randrange(len(data))]  # truncated
    if op == 1:
        return _flip(data, rng)
    if op == 2:
        return b""
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))  # garbage appended


def _largest_member_span(path: Path, suffix: str | None = None) -> tuple[int, int]:
    """(start, end) of the stored bytes of the zip's largest member, or of the member whose name ends in ``suffix``
    (torch stores weights uncompressed)."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = (max(zf.infolist(), key=lambda i: i.file_size) if suffix is None
                else next(i for i in zf.infolist() if i.filename.endswith(suffix)))
    n, e = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + n + e
    return start, start + info.compress_size


def _without_member(path: Path, out: Path, member: str) -> Path:
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(out, "w") as zo:
        for it in zi.infolist():
            if it.filename != member:
                zo.writestr(it, zi.read(it.filename))
    return out


def _problem(exc: BaseException, *names: str) -> str | None:
    """None for an HMRCriticError naming one of ``names``; else what is wrong."""
    if isinstance(exc, HMRCriticError):
        return None if any(n in str(exc) for n in names) else f"unnamed: {str(exc)[:160]}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    torch.manual_seed(0)
    return save_model(HMRDiffusion(TINY), tmp_path_factory.mktemp("ckpt") / "tiny.pt", extra={"seed": 0})


def _check_load(path: Path, original: dict | None = None) -> str | None:
    """``original``: the weights the file was written with — a file that loads must give them back."""
    from hmrcritic.hmr.diffusion import load_model

    try:
        model = load_model(path)
    except Exception as exc:  # noqa: BLE001
        return _problem(exc, str(path))
    if original is not None and not all(torch.equal(v, original[k]) for k, v in model.state_dict().items()):
        return "loaded with other weights than the file was written with"
    if not isinstance(model.checkpoint_extra, dict):
        return f"checkpoint_extra is {type(model.checkpoint_extra).__name__}"
    if not all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point()):
        return "non-finite weights loaded"
    return None


def _payload_variants(payload: dict, rng: random.Random):
    sd = payload["state_dict"]
    k = rng.choice(list(sd))
    t = sd[k]
    op = rng.randrange(9)
    if op == 0:
        return {**payload, "state_dict": {**sd, k: t.reshape(-1)[:max(1, t.numel() - 1)]}}  # wrong shape
    if op == 1:
        return {**payload, "state_dict": {**sd, k: t.to(rng.choice([torch.int64, torch.bool, torch.complex64]))}}
    if op == 2:
        return {**payload, "state_dict": {**sd, k: torch.full_like(t, rng.choice([math.nan, math.inf]))}}
    if op == 3:
        return {**payload, "state_dict": {kk: v for kk, v in sd.items() if kk != k}}
    if op == 4:
        return {**payload, "state_dict": {**sd, k: rng.choice([None, "x", 3, [1.0]])}}
    if op == 5:
        key = rng.choice(list(payload["config"]))
        value = rng.choice([None, "1", -1, 0, 10 ** 30, math.nan, 2.5, True, [], "cosine", "eps", 10 ** 5])
        return {**payload, "config": {**payload["config"], key: value}}
    if op == 6:
        key = rng.choice(list(payload))
        return {kk: v for kk, v in payload.items() if kk != key}
    if op == 7:
        return {**payload, rng.choice(list(payload)): rng.choice([None, "x", [], 5, {}])}
    return rng.choice([[payload], None, torch.zeros(3), {"format": payload["format"]}])


def fuzz_checkpoints(ckpt: Path, tmp: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    raw = ckpt.read_bytes()
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    lo, hi = _largest_member_span(ckpt)
    with zipfile.ZipFile(ckpt) as zf:
        members = zf.namelist()
    failures = []
    for i in range(count):
        path = tmp / f"c{seed}-{i}.pt"
        kind = rng.randrange(4)
        if kind == 0:
            path.write_bytes(mutate_file_bytes(raw, rng))
        elif kind == 1:
            path.write_bytes(_flip(raw, rng, lo, hi))  # inside the weights: torch.load alone does not notice
        elif kind == 2:
            _without_member(ckpt, path, rng.choice(members))
        else:
            torch.save(_payload_variants(payload, rng), path)
        if (why := _check_load(path, payload["state_dict"] if kind == 1 else None)) is not None:
            failures.append(f"case {seed}/{i} (kind {kind}): {why}")
    return failures


def test_checkpoint_reader_fuzz(ckpt, tmp_path):
    assert _check_load(ckpt) is None  # the unmutated file loads
    assert fuzz_checkpoints(ckpt, tmp_path, seed=26, count=60) == []


def test_a_flipped_byte_inside_a_checkpoints_weights_is_refused_not_loaded_as_other_weights(ckpt, tmp_path):
    """torch.load does not check the CRC-32 its zip records: a byte flipped by a bad copy or disk inside the
    weights loaded silently as a model with other weights. It is now an AssetError naming the file and member."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.diffusion import load_model

    lo, _ = _largest_member_span(ckpt)
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(_flip(ckpt.read_bytes(), random.Random(1), lo, lo + 64))
    with pytest.raises(AssetError, match=r"flipped\.pt is damaged: its part .*data/\d+ does not match the checksum"):
        load_model(bad)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_a_checkpoint_weight_of_integers_or_complex_numbers_is_refused_not_cast(ckpt, tmp_path, dtype):
    """A weight of the right shape but whole numbers, booleans or complex numbers was cast into the float model
    (truncated, 0/1, the imaginary part dropped) without a word."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.diffusion import load_model

    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    payload["state_dict"]["shape_out.weight"] = (payload["state_dict"]["shape_out.weight"] * 100).to(dtype)
    torch.save(payload, bad := tmp_path / "ints.pt")
    with pytest.raises(AssetError, match=rf"ints\.pt .*shape_out\.weight holds {dtype} numbers in the file"):
        load_model(bad)


def test_a_checkpoint_with_nan_weights_is_refused(ckpt, tmp_path):
    """No hmrcritic run saves NaN weights (a diverging loss stops first); a file with them loaded, and every
    hypothesis sampled from it was NaN, far from the file."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.diffusion import load_model

    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    payload["state_dict"]["joint_out.bias"][3] = math.nan
    torch.save(payload, bad := tmp_path / "nan.pt")
    with pytest.raises(AssetError, match=r"nan\.pt holds NaN or infinite weights \(joint_out\.bias\)"):
        load_model(bad)


@pytest.mark.parametrize("extra", [None, [1, 2], "x"])
def test_a_checkpoint_extra_that_is_not_a_dict_reads_as_empty(ckpt, tmp_path, extra):
    """``model.checkpoint_extra`` is documented as a dict (evaluate and train-base --ship read it so); another
    writer's null or list came through as it was."""
    from hmrcritic.hmr.diffusion import load_model

    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.save({**payload, "extra": extra}, path := tmp_path / "extra.pt")
    assert load_model(path).checkpoint_extra == {}


# ------------------------------------------------------------------------------------------------ finetune resume


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A finished 2-step finetune: its folder (out.pt, its state and log), the base checkpoint and the data."""
    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    root = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    base = save_model(HMRDiffusion(TINY), root / "base.pt")
    data = write_dataset(root / "prefs", n_groups=4)
    run = root / "run"
    run.mkdir()
    finetune(_ft_cfg(data, base, run / "o.pt", steps=2))
    return SimpleNamespace(root=root, base=base, data=data, run=run)


def _ft_cfg(data, base, out, **kw):
    from hmrcritic.alignment.finetune import FinetuneConfig

    kw = {"steps": 2, "batch_size": 2, "num_generations": 4, "checkpoint_every": 1, "lr": 1e-3, "threads": 1, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def _resume_problem(ft, folder: Path) -> str | None:
    """Resume the run copied into ``folder`` for one more step: it continues, or it is refused naming the state
    — and then the state and the log are as they were."""
    from hmrcritic.alignment.finetune import finetune

    state, log = folder / "o.pt.state.pt", folder / "o.pt.log.jsonl"
    before = {p: (p.read_bytes() if p.is_file() else None) for p in (state, log)}
    try:
        finetune(_ft_cfg(ft.data, ft.base, folder / "o.pt", steps=3))
    except Exception as exc:  # noqa: BLE001
        if (why := _problem(exc, str(state))) is not None:
            return why
        if any((p.read_bytes() if p.is_file() else None) != b for p, b in before.items()):
            return "refused, but the state or the log was changed"
    return None


def _state_variant(st: dict, rng: random.Random):
    key = rng.choice(sorted(st))
    op = rng.randrange(6)
    if op == 0:
        return {k: v for k, v in st.items() if k != key}
    if op == 1:
        return {**st, key: rng.choice([None, "x", 5, [], {}, math.nan, 10 ** 30, torch.zeros(3), -1, ["x"], [1, "x"]])}
    if op == 2:
        part = rng.choice(["policy", "ema"])
        k = rng.choice(sorted(st[part]))
        return {**st, part: {**st[part], k: torch.zeros(1)}}
    if op == 3:
        return {**st, "opt": {"state": {}, "param_groups": []}}
    if op == 4:
        return {**st, "tracker": {"n": "x"}}
    return rng.choice([[st], torch.zeros(2), {"format": "hmrcritic-diffusion"}])


def fuzz_finetune_states(ft, tmp: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    state = ft.run / "o.pt.state.pt"
    st = torch.load(state, map_location="cpu", weights_only=True)
    raw = state.read_bytes()
    lo, hi = _largest_member_span(state)
    failures = []
    for i in range(count):
        folder = tmp / f"s{seed}-{i}"
        shutil.copytree(ft.run, folder)
        kind = rng.randrange(4)
        if kind == 0:
            (folder / state.name).write_bytes(mutate_file_bytes(raw, rng))
        elif kind == 1:
            (folder / state.name).write_bytes(_flip(raw, rng, lo, hi))
        elif kind == 2:
            torch.save(_state_variant(st, rng), folder / state.name)
        else:
            log = folder / "o.pt.log.jsonl"
            log.write_text(log.read_text(encoding="utf-8") + rng.choice(
                ['{"step": "x"}\n', '{"step": null}\n', '{"step": [1]}\n', '{"step": 1e400}\n', "[" * 5000 + "\n",
                 '{"step": 10}\n', "\x00\x00\n"]), encoding="utf-8")
        if (why := _resume_problem(ft, folder)) is not None:
            failures.append(f"case {seed}/{i} (kind {kind}): {why}")
    return failures


def test_finetune_resume_state_fuzz(finetuned, tmp_path):
    assert fuzz_finetune_states(finetuned, tmp_path, seed=26, count=16) == []


@pytest.mark.parametrize("case", ["list root", "policy shape", "window", "step nan", "threads", "tracker"])
def test_a_damaged_finetune_state_is_refused_naming_it_and_kept(finetuned, tmp_path, case):
    """Each of these ended the resume in a bare AttributeError / RuntimeError / TypeError / ValueError / KeyError
    (or, for a damaged loss window, after the first step) that named no file. It is one AssetError naming the
    state, and the state and its log are left as they were."""
    state = finetuned.run / "o.pt.state.pt"
    st = torch.load(state, map_location="cpu", weights_only=True)
    st = {"list root": [st], "policy shape": {**st, "policy": {**st["policy"], "state_pos": torch.zeros(1)}},
          "window": {**st, "window": [1, "x"]}, "step nan": {**st, "step": math.nan},
          "threads": {**st, "threads_used": ["x"]}, "tracker": {**st, "tracker": {"n": 1}}}[case]
    folder = tmp_path / "run"
    shutil.copytree(finetuned.run, folder)
    torch.save(st, folder / state.name)
    assert _resume_problem(finetuned, folder) is None


def test_a_flipped_byte_in_a_finetune_state_is_refused_not_resumed(finetuned, tmp_path):
    """The resume state is a torch zip too: a flipped byte in its weights resumed training from other weights."""
    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.errors import AssetError

    folder = tmp_path / "run"
    shutil.copytree(finetuned.run, folder)
    state = folder / "o.pt.state.pt"
    lo, _ = _largest_member_span(state)
    state.write_bytes(damaged := _flip(state.read_bytes(), random.Random(2), lo, lo + 64))
    with pytest.raises(AssetError, match=r"cannot resume from .*o\.pt\.state\.pt: it is damaged"):
        finetune(_ft_cfg(finetuned.data, finetuned.base, folder / "o.pt", steps=3))
    assert state.read_bytes() == damaged


def test_a_finetune_log_record_with_a_text_step_does_not_stop_the_resume(finetuned, tmp_path):
    """A log line whose "step" is text (a hand edit) failed the resume with "TypeError: '<=' not supported between
    instances of 'str' and 'int'"; it is kept, as a record without a step is, and the run goes on."""
    from hmrcritic.alignment.finetune import finetune
    from hmrcritic.io import read_jsonl

    folder = tmp_path / "run"
    shutil.copytree(finetuned.run, folder)
    log = folder / "o.pt.log.jsonl"
    log.write_text(log.read_text(encoding="utf-8") + '{"step": "x", "note": "mine"}\n', encoding="utf-8")
    finetune(_ft_cfg(finetuned.data, finetuned.base, folder / "o.pt", steps=3))
    records = read_jsonl(log)
    assert {"step": "x", "note": "mine"} in records and records[-1]["step"] == 3


# ------------------------------------------------------------------------------------------------ JSON sidecars


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _explore_files(tmp: Path) -> Path:
    """A memory folder with the exploration sidecars as explore writes them."""
    from hmrcritic.agent import explore
    from hmrcritic.io import append_jsonl, atomic_write_json

    mem = tmp / "mem"
    mem.mkdir(parents=True)
    memory = SimpleNamespace(path=str(mem))
    explore._add_explored(memory, "train", ["train-0", "train-1"], {"source": "fresh"})
    explore._add_explored(memory, "train", ["train-2"], {}, key="calibration_group_ids")
    history = [{"group_id": "train-0", "evidence": {"m": [0.1, 0.2]}, "overall": [5.0, 6.0], "error": [40.0, 30.0]}]
    atomic_write_json(mem / explore.PROGRESS_FILE, {
        "runs": {"abc": {"rounds_done": [1], "spans": [[0, 2]], "settings": {"split": "train"}, "history": history}},
        "rounds_total": 1, "batches": ["abc:1"], "rule_effects": {"r1": [0.1, 2]}, "calibration": {}})
    append_jsonl(mem / explore.LOG_FILE, {"round": 1, "groups": 2, "new_rules": []})
    assert explore._read_progress(mem)["rounds_total"] == 1  # the file is one the reader takes
    assert explore.read_log(memory) and explore.explored_record(memory)["splits"]["train"]["group_ids"]
    return mem


def _check_sidecars(mem: Path) -> str | None:
    from hmrcritic.agent import explore

    memory = SimpleNamespace(path=str(mem))
    for name, read in ((explore.EXPLORED_FILE, lambda: explore.assert_not_explored(memory, "train", ["x-9"])),
                       (explore.PROGRESS_FILE, lambda: explore._read_progress(mem)),
                       (explore.LOG_FILE, lambda: explore.read_log(memory))):
        try:
            read()
        except Exception as exc:  # noqa: BLE001
            if (why := _problem(exc, str(mem / name))) is not None:
                return f"{name}: {why}"
    return None


def fuzz_sidecars(tmp: Path, seed: int, count: int) -> list[str]:
    from hmrcritic.agent import explore

    rng = random.Random(seed)
    src = _explore_files(tmp / "src")
    failures = []
    for i in range(count):
        mem = tmp / f"m{seed}-{i}"
        shutil.copytree(src, mem)
        name = rng.choice([explore.EXPLORED_FILE, explore.PROGRESS_FILE, explore.LOG_FILE])
        f = mem / name
        kind = rng.randrange(4)
        if kind == 0:
            f.write_bytes(mutate_file_bytes(f.read_bytes(), rng))
        elif kind == 1 and name != explore.LOG_FILE:
            f.write_text(dump(mutate_doc(json.loads(f.read_text(encoding="utf-8")), rng)), encoding="utf-8")
        elif kind == 2:
            f.write_text(rng.choice([_deep(), '{"splits": ' + _deep() + "}", "1" * 5000, "\ufeff{}", "null"]))
        else:
            f.unlink()
            f.mkdir()
        if (why := _check_sidecars(mem)) is not None:
            failures.append(f"case {seed}/{i} ({name}, kind {kind}): {why}")
    return failures


def test_exploration_sidecar_fuzz(tmp_path):
    assert fuzz_sidecars(tmp_path, seed=26, count=120) == []


@pytest.mark.parametrize("which", ["explored_on.json", "explore_progress.json"])
def test_an_exploration_record_nested_thousands_deep_is_an_input_error(tmp_path, which):
    """JSON nested deeper than the parser goes came out of every explore, evaluation guard and learning curve as a
    bare RecursionError; it is the reader's InputError naming the file, as any other unreadable record."""
    from hmrcritic.agent import explore
    from hmrcritic.errors import InputError

    mem = _explore_files(tmp_path)
    (mem / which).write_text(_deep(), encoding="utf-8")
    read = (lambda: explore.explored_record(SimpleNamespace(path=str(mem)))) if which == "explored_on.json" \
        else (lambda: explore._read_progress(mem))
    with pytest.raises(InputError, match=rf"{which}: unreadable exploration"):
        read()


@pytest.mark.parametrize("field", ["overall", "evidence"])
def test_a_progress_history_score_of_hundreds_of_digits_is_an_input_error(tmp_path, field):
    """An integer too large for a float in a history group's scores ended every explore and learning curve in
    "OverflowError: int too large to convert to float"; it is the record check's InputError naming the file."""
    from hmrcritic.agent import explore
    from hmrcritic.errors import InputError

    mem = _explore_files(tmp_path)
    doc = json.loads((mem / explore.PROGRESS_FILE).read_text(encoding="utf-8"))
    group = doc["runs"]["abc"]["history"][0]
    if field == "overall":
        group["overall"] = [10 ** 400, 1]
    else:
        group["evidence"]["m"] = [10 ** 400, 1]
    (mem / explore.PROGRESS_FILE).write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=r"explore_progress\.json: unreadable .*history group 0 is not a group"):
        explore._read_progress(mem)


def test_an_exploration_log_that_is_a_folder_is_an_input_error(tmp_path):
    from hmrcritic.agent import explore
    from hmrcritic.errors import InputError

    mem = _explore_files(tmp_path)
    (mem / explore.LOG_FILE).unlink()
    (mem / explore.LOG_FILE).mkdir()
    with pytest.raises(InputError, match=r"explore_log\.jsonl: the exploration log is not a file|not a file"):
        explore.read_log(SimpleNamespace(path=str(mem)))


# ------------------------------------------------------------------------------------------------ learning curve


def curve_row(round_: int, version: str = "v0") -> dict:
    """A learning-curve row as ``learning_curve`` appends it (the figures a resumed row must hold, see
    ``learning_curve._ROW_KEYS``)."""
    return {"round": round_, "spearman": 0.5, "kendall": 0.4, "top1_pa_mpjpe_mm": 80.0, "rules": 18, "prototypes": 0,
            "memory_version": version}


def _partial(tmp: Path) -> tuple[SimpleNamespace, Path, dict]:
    from hmrcritic.agent.learning_curve import PARTIAL_FILE
    from hmrcritic.io import atomic_write_json

    mem_dir, out = tmp / "mem", tmp / "out"
    mem_dir.mkdir()
    out.mkdir()
    settings = {"split": "train", "batch_size": 2, "heldout_errors": [[1.0, 2.0]]}
    atomic_write_json(out / PARTIAL_FILE, {"rows": [curve_row(0)], "memory": str(mem_dir), "settings": settings})
    return SimpleNamespace(path=str(mem_dir), version=lambda: "v0"), out, settings


def _check_partial(mem, out: Path, settings: dict) -> str | None:
    from hmrcritic.agent.learning_curve import _resume_rows

    try:
        rows, why = _resume_rows(mem, out, settings)
    except Exception as exc:  # noqa: BLE001
        return _problem(exc, str(out))
    if rows and not all(isinstance(r, dict) and type(r.get("round")) is int for r in rows[-1:]):
        return f"rows taken with a round of {rows[-1].get('round')!r}"
    return None


def fuzz_partials(tmp: Path, seed: int, count: int) -> list[str]:
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    rng = random.Random(seed)
    mem, out, settings = _partial(tmp)
    good = (out / PARTIAL_FILE).read_text(encoding="utf-8")
    assert _resume_rows_ok(mem, out, settings)
    failures = []
    for i in range(count):
        f = out / PARTIAL_FILE
        if f.is_dir():
            f.rmdir()
        kind = rng.randrange(4)
        if kind == 0:
            f.write_bytes(mutate_file_bytes(good.encode(), rng))
        elif kind == 1:
            f.write_text(dump(mutate_doc(json.loads(good), rng)), encoding="utf-8")
        elif kind == 2:
            f.write_text(rng.choice([_deep(), good.replace('"round": 0', '"round": 1e400'), "[1]"]), encoding="utf-8")
        else:
            f.unlink(missing_ok=True)
            f.mkdir()
        if (why := _check_partial(mem, out, settings)) is not None:
            failures.append(f"case {seed}/{i} (kind {kind}): {why}")
    return failures


def _resume_rows_ok(mem, out, settings) -> bool:
    from hmrcritic.agent.learning_curve import _resume_rows

    return bool(_resume_rows(mem, out, settings)[0])


def test_learning_curve_partial_file_fuzz(tmp_path):
    assert fuzz_partials(tmp_path, seed=26, count=150) == []


@pytest.mark.parametrize("edit", ["settings list", "round inf", "deep", "round 2.7"])
def test_a_learning_curve_partial_file_of_another_shape_is_not_resumed(tmp_path, edit):
    """A partial file whose settings were a list ("AttributeError: 'list' object has no attribute 'get'"), whose
    round was 1e400 (OverflowError) or nested thousands deep (RecursionError) ended the curve in a traceback; a
    round of 2.7 was read as round 2. Each is a curve that cannot be continued, said with the file's name."""
    from hmrcritic.agent.explore import PROGRESS_FILE
    from hmrcritic.agent.learning_curve import PARTIAL_FILE, _resume_rows

    mem, out, settings = _partial(tmp_path)
    f = out / PARTIAL_FILE
    doc = json.loads(f.read_text(encoding="utf-8"))
    text = {"settings list": json.dumps({**doc, "settings": [1]}),
            "round inf": json.dumps(doc).replace('"round": 0', '"round": 1e400'),
            "deep": _deep(),
            "round 2.7": json.dumps(doc).replace('"round": 0', '"round": 2.7')}[edit]
    f.write_text(text, encoding="utf-8")
    # the memory explored 2 rounds and still at the version the row records: a round 2.7 read as 2 was resumed
    (Path(mem.path) / PROGRESS_FILE).write_text(json.dumps({"runs": {}, "rounds_total": 2, "batches": []}))
    if edit == "round 2.7":  # the same file with round 2 is resumed: the refusal is the round's type alone
        rows = [curve_row(r) for r in range(3)]
        f.write_text(json.dumps({**doc, "rows": rows}), encoding="utf-8")
        assert _resume_rows(mem, out, settings)[0]
        f.write_text(json.dumps({**doc, "rows": rows[:2] + [{**rows[2], "round": 2.7}]}), encoding="utf-8")
    rows, why = _resume_rows(mem, out, settings)
    assert rows == [] and str(f) in why


# ------------------------------------------------------------------------------------------------ traces


def _trace_records(run_id: str) -> list[dict]:
    """A run's records, as TraceWriter writes them."""
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter

    w = TraceWriter(run_id, "g1")
    w.start(AgentConfig())
    w.node("render", {"renders": {"overlay_grid": "a.png"}}, 0.25)
    w.node("revise", {"scores": [1, 2, 3], "round": 1}, 0.5)
    w.finish({"round": 1, "done": True})
    return w.path


def _check_trace(run_id: str) -> str | None:
    from hmrcritic.agent.trace import format_trace, read_trace, trace_mermaid, traces_dir

    try:
        records = read_trace(run_id)
        format_trace(records)
        trace_mermaid(records)
    except Exception as exc:  # noqa: BLE001
        return _problem(exc, str(traces_dir()))
    return None


def fuzz_traces(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    path = _trace_records(f"fz{seed}")
    good = path.read_text(encoding="utf-8").splitlines()
    assert _check_trace(f"fz{seed}") is None
    failures = []
    for i in range(count):
        lines = list(good)
        if path.is_dir():
            path.rmdir()
        kind = rng.randrange(4)
        if kind == 0:
            text = mutate_file_bytes("\n".join(lines).encode(), rng)
            path.write_bytes(text)
        elif kind == 3 and i % 10 == 0:
            path.unlink()
            path.mkdir()
        else:
            j = rng.randrange(len(lines))
            doc = json.loads(lines[j])
            doc.pop("checksum", None)  # edited by hand: no checksum to fail
            if kind == 2:
                doc[rng.choice(["event", "seconds", "step", "rounds", "changed", "config"])] = rng.choice(
                    [10 ** 306, 1e308, {"a": 1}, [1], None, True, -1, "x", {"keys": 5}, {"x": [[[]]] * 3}])
            else:
                doc = mutate_doc(doc, rng)
            lines[j] = dump(doc)
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if (why := _check_trace(f"fz{seed}")) is not None:
            failures.append(f"case {seed}/{i} (kind {kind}): {why}")
    return failures


def test_trace_reader_fuzz():
    assert fuzz_traces(seed=26, count=200) == []


@pytest.mark.parametrize("edit", ["event object", "seconds 306 digits", "folder", "start seconds object"])
def test_a_damaged_trace_is_read_or_refused_naming_it(edit):
    """An "event" that is an object failed the record check itself ("TypeError: unhashable type: 'dict'"); a
    "seconds" integer of 306 digits passed it but overflowed once shown in ms ("OverflowError: int too large to
    convert to float"); a folder of the trace's name was "IsADirectoryError: [Errno 21]"; an object as "seconds" of a
    start record (whose fields do not type it) "TypeError: float() argument must be … not 'dict'"."""
    from hmrcritic.agent.trace import format_trace, read_trace, trace_mermaid

    path = _trace_records(run := f"edit-{edit.split()[0]}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if edit == "folder":
        path.unlink()
        path.mkdir()
        with pytest.raises(HMRCriticError, match=rf"{run}\.jsonl is not a trace file"):
            read_trace(run)
        return
    if edit == "start seconds object":
        doc = {k: v for k, v in json.loads(lines[0]).items() if k != "checksum"}
        path.write_text("\n".join([json.dumps({**doc, "seconds": {"a": 1}}), *lines[1:]]) + "\n", encoding="utf-8")
        assert "render" in format_trace(read_trace(run))
        return
    doc = {k: v for k, v in json.loads(lines[1]).items() if k != "checksum"}
    if edit == "event object":
        doc["event"] = {"a": 1}
    else:
        doc["seconds"] = 10 ** 306
    path.write_text("\n".join([lines[0], json.dumps(doc), *lines[2:]]) + "\n", encoding="utf-8")
    records = read_trace(run)
    text, chart = format_trace(records), trace_mermaid(records)
    assert "render" in text if edit != "event object" else ("render" not in text and "revise" in chart)


# ------------------------------------------------------------------------------------------------ scores.json


def _scores_json(tmp: Path) -> Path:
    from hmrcritic.agent.api import ScoredGroup, write_scores
    from hmrcritic.agent.schema import HypothesisScore

    scores = [HypothesisScore(index=i, motion_structure=5, physical_feasibility=6, image_alignment=7,
                              overall=6.5 - i, rationale="r") for i in range(3)]
    result = ScoredGroup(
        group_id="g1", scores=scores, ranking=[0, 1, 2], memory_version="v",
        reflections=[{"round": 0, "action": "accept", "issues": [{"kind": "k", "detail": "d"}], "changes": ["c"]}],
        rules_applied=["r1"], rules_recalled=[{"rule_id": "r1", "text": "t", "n_used": 1, "n_success": 1}],
        prototypes_recalled=[[{"proto_id": "p", "similarity": 0.9, "overall": 5.0, "rationale": "x"}], [], []],
        evidence={"m": [1.0, 2.0, 3.0]}, renders={"overlay_grid": str(tmp / "missing.png")})
    return write_scores(result, tmp)


def fuzz_scores(tmp: Path, seed: int, count: int) -> list[str]:
    from hmrcritic.agent.report import write_report

    rng = random.Random(seed)
    doc = json.loads(_scores_json(tmp).read_text(encoding="utf-8"))
    write_report(doc, tmp / "ok")
    failures = []
    for i in range(count):
        try:
            mutated = json.loads(dump(mutate_doc(doc, rng)))
        except (ValueError, RecursionError):  # not a document json.load gives back
            continue
        try:
            write_report(mutated, tmp / "out")
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, HMRCriticError):
                failures.append(f"case {seed}/{i}: {type(exc).__name__}: {str(exc)[:160]}")
    return failures


def test_scores_json_report_fuzz(tmp_path):
    assert fuzz_scores(tmp_path, seed=26, count=400) == []


@pytest.mark.parametrize("value", [3, 1.5, "one issue"])
def test_a_reflection_with_a_lone_issue_is_reported_not_a_type_error(tmp_path, value):
    """A scores.json whose reflection has ``"issues": 3`` (a hand edit, another tool) failed the report with
    "TypeError: 'int' object is not iterable"; a string was listed a character an issue."""
    from hmrcritic.agent.report import render_html

    doc = json.loads(_scores_json(tmp_path).read_text(encoding="utf-8"))
    doc["reflections"][0]["issues"] = value
    doc["reflections"][0]["changes"] = value
    page = render_html(doc)
    assert "1 issue(s)" in page and f"<li>[] {value}</li>" in page


@pytest.mark.parametrize("path", ["a\x00b.png", "\ud800.png"])
def test_a_render_path_no_file_system_takes_is_a_missing_image(tmp_path, path):
    """A NUL or a lone surrogate in a scores.json's render path failed the report ("ValueError: embedded null
    byte", UnicodeEncodeError) instead of noting the image as missing."""
    from hmrcritic.agent.report import render_html

    doc = json.loads(_scores_json(tmp_path).read_text(encoding="utf-8"))
    doc["renders"] = {"overlay_grid": path}
    assert "image missing" in render_html(doc) and "not a usable file path" in render_html(doc)


# ------------------------------------------------------------------------------------------------ body models


@pytest.fixture(scope="module")
def mannequin_file(tmp_path_factory) -> Path:
    from hmrcritic.hmr import mannequin

    return mannequin.ensure_mannequin(tmp_path_factory.mktemp("mq"))


def _check_body(path: Path) -> str | None:
    from hmrcritic.hmr.body import BodyModel, read_model_arrays

    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the casts' ComplexWarning / overflow notes: the result is judged
            verts = BodyModel(read_model_arrays(path), name=str(path)).template().vertices  # as load_body_model
    except Exception as exc:  # noqa: BLE001
        return _problem(exc, str(path))
    return None if bool(torch.isfinite(verts).all()) else "non-finite template vertices"


def _body_variant(d: dict, rng: random.Random) -> dict:
    k = rng.choice([k for k, v in d.items() if isinstance(v, np.ndarray)])
    a = d[k]
    op = rng.randrange(8)
    new = {0: lambda: None, 1: lambda: a.astype(np.float64) * np.nan, 2: lambda: a.T, 3: lambda: a.astype(complex),
           4: lambda: a.astype(np.float64) * 1e300, 5: lambda: a[None], 6: lambda: np.zeros((0,)),
           7: lambda: a.astype(bool)}[op]()
    out = dict(d)
    if new is None:
        del out[k]
    else:
        out[k] = new
    return out


def fuzz_bodies(src: Path, tmp: Path, seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    raw = src.read_bytes()
    with open(src, "rb") as fh:
        d = pickle.load(fh)
    failures = []
    for i in range(count):
        kind = rng.randrange(3)
        path = tmp / f"b{seed}-{i}{'.npz' if kind == 2 else '.pkl'}"
        if kind == 0:
            path.write_bytes(mutate_file_bytes(raw, rng))
        else:
            v = _body_variant(d, rng)
            if kind == 1:
                path.write_bytes(pickle.dumps(v))
            else:
                np.savez(path, **{k: x for k, x in v.items() if isinstance(x, np.ndarray)})
        if (why := _check_body(path)) is not None:
            failures.append(f"case {seed}/{i} (kind {kind}): {why}")
    return failures


def test_body_model_file_fuzz(mannequin_file, tmp_path):
    assert _check_body(mannequin_file) is None
    assert fuzz_bodies(mannequin_file, tmp_path, seed=26, count=50) == []


@pytest.mark.parametrize("edit", ["complex", "beyond float32"])
def test_a_body_model_of_complex_or_out_of_range_numbers_is_refused(mannequin_file, tmp_path, edit):
    """Complex arrays lost their imaginary part to the casts (a ComplexWarning, then other values); values past
    float32 range (1e300: finite in float64) became inf in the float32 model and every vertex NaN. Both are the
    loader's AssetError naming the file and key."""
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.body import read_model_arrays

    with open(mannequin_file, "rb") as fh:
        d = pickle.load(fh)
    d["v_template"] = d["v_template"].astype(complex) if edit == "complex" else d["v_template"] * 1e300
    (path := tmp_path / "odd.pkl").write_bytes(pickle.dumps(d))
    with pytest.raises(AssetError, match=r"odd\.pkl: key 'v_template' (is not numeric|holds values beyond float32)"):
        read_model_arrays(path)


# ------------------------------------------------------------------------------------------------ settings


_ENV_VALUES = ["", " ", "x", "nan", "inf", "-1", "0", "1e400", "9" * 5000, "~", "~nouser-fz/x", "/", "cuda:99",
               "http://", "http://[::1", "ftp://x", "a" * 300, "a/" * 10 + "b" * 300, "high", "..", "-", "\udcff"]


def fuzz_settings(tmp: Path, monkeypatch, seed: int, count: int) -> list[str]:
    import re

    from pydantic import ValidationError

    from hmrcritic import config
    from hmrcritic.agent.state import AgentConfig

    src = Path(config.__file__).read_text(encoding="utf-8") + Path(
        __import__("hmrcritic.agent.state", fromlist=["x"]).__file__).read_text(encoding="utf-8")
    names = sorted(set(re.findall(r"HMRCRITIC_[A-Z_]+[A-Z]", src)) - {"HMRCRITIC_HOME"})
    readers = [config.cache_dir, config.data_dir, config.memory_dir, config.runs_dir, config.api_key,
               config.check_device, config.body_model_path, config.default_device, config.env_chroma_url,
               lambda: config.JudgeSettings().public(), AgentConfig]
    rng = random.Random(seed)
    failures = []
    for i in range(count):
        name, value = rng.choice(names), rng.choice(_ENV_VALUES)
        with monkeypatch.context() as m:
            m.setenv("HMRCRITIC_HOME", str(tmp))
            try:
                m.setenv(name, value)
            except (ValueError, UnicodeEncodeError):  # no value the environment can hold
                continue
            read = rng.choice(readers)
            try:
                read()
            except ValidationError:  # AgentConfig's range checks: the CLI names the variable (cli._validation_error)
                pass
            except Exception as exc:  # noqa: BLE001
                if not isinstance(exc, HMRCriticError):
                    failures.append(f"case {seed}/{i}: {name}={value[:20]!r}: {type(exc).__name__}: {str(exc)[:120]}")
    return failures


def test_settings_fuzz(tmp_path, monkeypatch):
    assert fuzz_settings(tmp_path, monkeypatch, seed=26, count=400) == []


def test_a_folder_variable_with_a_name_too_long_is_an_input_error(tmp_path, monkeypatch):
    """A path component longer than the file system takes (255 bytes) ended every command in a bare "OSError:
    [Errno 36] File name too long" from the dangling-link check, the variable unnamed."""
    from hmrcritic import config
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / ("m" * 300)))
    with pytest.raises(InputError, match=r"HMRCRITIC_MEMORY: .* is not a usable folder \(File name too long\)"):
        config.memory_dir()
    assert os.listdir(tmp_path) == []
