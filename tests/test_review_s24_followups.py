"""Session 24: follow-ups to the helpers' reports (defects found outside their files)."""

from __future__ import annotations

import json


def test_finite_float_reads_an_integer_too_large_for_a_float_as_not_a_number():
    """``finite_float`` promised "without a traceback" for any object, but ``float(10**400)`` raises OverflowError,
    which it let through (to memory import, stored scores and every other caller)."""
    from hmrcritic.agent.schema import finite_float

    assert finite_float(10**400) is None
    assert finite_float(-(10**400), 5.0) == 5.0
    assert finite_float("1e999") is None
    assert finite_float(7) == 7.0


def test_finetune_refuses_to_write_the_aligned_model_over_its_base(tmp_path):
    """``--out`` naming the ``--model`` checkpoint (the same file through another spelling too) replaced the base
    model with the aligned weights: the frozen reference of later runs was gone, and a resume was refused as
    "another base model". Refused before any work, and the base file is left as it was."""
    import pytest
    from test_finetune import TINY, write_dataset

    from hmrcritic.alignment.finetune import FinetuneConfig, finetune
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    base = save_model(HMRDiffusion(TINY), tmp_path / "base.pt")
    before = base.read_bytes()
    data = write_dataset(tmp_path / "prefs", n_groups=2)
    cfg = FinetuneConfig(data=str(data), model=str(base), out=str(tmp_path / "." / "base.pt"), steps=1, threads=1)
    with pytest.raises(InputError, match="is the checkpoint being aligned"):
        finetune(cfg, progress=False)
    assert base.read_bytes() == before


def test_a_judge_error_quoting_the_key_reaches_neither_the_error_nor_the_checkpoint(tmp_path, monkeypatch):
    """The critique node wrapped a judge's unexpected error as ``JudgeError(f"... {exc}")`` as it was: an error text
    quoting the API key (a custom judge, a client library's message) went into the group's error and, through
    LangGraph's record of a failed node, into the checkpoint database on disk."""
    import pytest

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.judges import BuiltinJudge
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import JudgeError
    from hmrcritic.memory.store import MemoryStore
    from tests.test_agent_graph import make_group

    key = "sk-FAKEs24node0123456789abcd"
    monkeypatch.setenv("HMRCRITIC_API_KEY", key)

    class LeakyJudge(BuiltinJudge):
        def critique(self, ctx):
            raise RuntimeError(f"upstream refused key {key}")

    memory = MemoryStore(path=tmp_path / "memory")
    s, h, _ = make_group(3)
    db = tmp_path / "ckpt.sqlite"
    with pytest.raises(JudgeError, match="upstream refused key") as err:
        critique_group(s, h, judge=LeakyJudge(), memory=memory, config=AgentConfig(render=False),
                       checkpointer=open_checkpointer(db), run_dir=tmp_path / "g")
    memory.close()
    assert key not in str(err.value) and "FAKEs24node" not in str(err.value)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("ckpt.sqlite*"))
    assert b"upstream refused" in stored  # LangGraph keeps the failed node's error with the checkpoint
    assert key.encode() not in stored and b"FAKEs24node" not in stored


def test_explore_closes_the_store_it_opened_from_a_folder(tmp_path):
    """``explore()`` given a folder (or None) opened a store and left it, and its claim on the folder's Chroma system,
    to the garbage collector (as learning_curve did); a store the caller passed in stays the caller's, open."""
    from hmrcritic.agent.explore import explore
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split
    from hmrcritic.memory.store import MemoryStore

    groups = groups_from_perturbed_gt(SceneSet(generate_split("train", tmp_path / "train", n=4, quiet=True)),
                                      num_groups=4, num_generations=6, seed=0)
    folder = tmp_path / "mem"
    summary = explore(folder, rounds=1, batch_size=2, groups=groups, calibration_groups=0)
    # its claim on the folder given up: Chroma's system for it stopped (the database file itself is let go when
    # Chroma's objects are freed, which can wait for the garbage collector: not what is tested here)
    assert summary.memory_version and _claims_on(folder) == 0
    store = MemoryStore(folder)
    explore(store, rounds=1, batch_size=2, groups=groups, calibration_groups=0, start=2)
    assert _claims_on(folder) == 1 and store.stats()["rules"] > 0
    store.close()
    assert _claims_on(folder) == 0


def _claims_on(folder) -> int:
    """How many open stores of this process hold ``folder``'s Chroma system (memory/store.py's claims)."""
    from hmrcritic.memory import store as S

    S._settle_released()
    return sum(n for key, n in S._CLAIMS.items() if str(folder.resolve()) in str(key))


def test_doctor_names_every_bad_vlm_setting_beside_the_agent_ones(monkeypatch):
    """One bad ``HMRCRITIC_VLM_*`` value ended doctor's judge check as a bare "InputError: ..." (JudgeSettings() was
    read outside its checks): the other bad VLM values and every agent setting went unsaid until it was fixed."""
    from hmrcritic.commands.doctor import _judge

    monkeypatch.setenv("HMRCRITIC_VLM_IMAGE_MAX_SIDE", "10")
    monkeypatch.setenv("HMRCRITIC_VLM_IMAGE_DETAIL", "medium")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "-3")
    monkeypatch.setenv("HMRCRITIC_LEARN", "maybe")
    res = _judge()
    assert res["ok"] is False
    for said in ("HMRCRITIC_VLM_IMAGE_MAX_SIDE='10'", "HMRCRITIC_VLM_IMAGE_DETAIL", "'medium'",
                 "HMRCRITIC_VLM_TIMEOUT='-3'", "HMRCRITIC_LEARN='maybe'"):
        assert said in res["error"], (said, res["error"])
    assert res["settings"]["image_detail"] == res["settings"]["image_max_side"] == "invalid (see the error)"
    assert res["settings"]["model"] == "gpt-4o-mini" and res["settings"]["api_key"] in ("set", "not set")


def test_a_trace_that_cannot_be_finished_does_not_fail_the_critique_it_traces(tmp_path, monkeypatch, caplog):
    """``TraceWriter.finish`` raised the OSError of a trace record it could not write (a full disk, the traces
    folder gone): ``critique_group`` had scored the group and stored its checkpoint, and then reported it failed.
    The trace is a diagnostic: warned about, the critique's result returned."""
    import shutil

    from hmrcritic.agent import trace
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    trace.traces_dir().mkdir(parents=True)
    w = trace.TraceWriter("run-f", "g1")
    w.start(AgentConfig())
    w.node("render", {"renders": ["front"]}, 0.25)
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "runs").write_text("not a folder")
    with caplog.at_level("WARNING", logger="hmrcritic.agent.trace"):
        w.finish({"round": 0, "done": True})
    assert "could not be written" in caplog.text and w._lock is None


def test_chroma_basic_auth_credentials_are_masked_in_every_form(monkeypatch):
    """Chroma's own ``CHROMA_CLIENT_AUTH_CREDENTIALS`` (the store's docstring says it works) was no secret to the
    scrubber, and a server URL's ``user:password`` was masked base64-encoded (as a basic-auth header carries it)
    only when the encoding held a digit."""
    import base64

    from hmrcritic import redact

    monkeypatch.setenv("CHROMA_CLIENT_AUTH_CREDENTIALS", "admin:hunter-two")
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://bob:correcthorse@db.local:8000")
    for secret in ("admin:hunter-two", "hunter-two", base64.b64encode(b"admin:hunter-two").decode(),
                   "correcthorse", base64.b64encode(b"bob:correcthorse").decode()):
        text = f"request failed: Authorization: {secret} (retrying)"
        out = redact.scrub(text)
        assert secret not in out and "request failed" in out, (secret, out)


def test_an_atomic_write_never_replaces_a_device_a_pipe_or_a_descriptor_link(tmp_path):
    """Every output is a new file renamed over its target: over ``/dev/null``, a FIFO or a link to a process's file
    descriptor (``/dev/stdout`` → ``/proc/self/fd/1``, also when fd 1 is a regular file) the rename replaced the
    device or link with a regular file (as root: for every process) and the data never reached the reader. Refused
    for every writer (finetune --out, reports, exports: not only the CLI commands that check their --out), and
    the target is left as it was; a link to a regular file is still written."""
    import os
    import stat

    import pytest

    from hmrcritic.errors import InputError
    from hmrcritic.io import atomic_write_json, atomic_write_text

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd_link = tmp_path / "stdout"
    fd_link.symlink_to("/proc/self/fd/1")
    dev_link = tmp_path / "null"
    dev_link.symlink_to("/dev/null")
    for target in (fifo, fd_link, dev_link):
        with pytest.raises(InputError, match="not a file to write"):
            atomic_write_json(target, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and fd_link.is_symlink() and dev_link.is_symlink()
    regular = tmp_path / "real.txt"
    regular.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(regular)
    atomic_write_text(link, "new")
    assert link.read_text() == "new"


def test_reproduce_json_is_strict_json_when_a_figure_is_nan(monkeypatch, capsys, tmp_path):
    """``reproduce --json`` printed ``json.dumps(res)``: an exploration round that scored no group has a NaN mean
    Spearman, printed as the bare token ``NaN`` — no JSON (jq and strict parsers refuse the whole document). The
    result here stands in for a finished run (the library's own tests run the real one): what is tested is the
    command's printing."""
    import json

    from hmrcritic.alignment import reproduce as R
    from hmrcritic.cli import main

    res = {"out_dir": str(tmp_path), "explore": {"summary": {"rounds": [{"mean_spearman": float("nan")}]}}}
    monkeypatch.setattr(R, "reproduce", lambda *a, **k: res)
    assert main(["reproduce", "--quick", "--out", str(tmp_path), "--json"]) == 0

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    doc = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert doc["explore"]["summary"]["rounds"][0]["mean_spearman"] is None


def test_a_trace_record_is_flushed_not_fsynced(tmp_path, monkeypatch):
    """Every trace record was fsynced: eleven fsyncs a group, about a quarter of a builtin critique's time on a
    busy disk (profiled in session 24), for a diagnostic file. Records are flushed (a killed process keeps them)
    and read back whole; durable logs (append_jsonl's default) are still fsynced."""
    import os

    from hmrcritic.agent import trace
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.io import append_jsonl

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    w = trace.TraceWriter("run-s", "g1")
    w.start(AgentConfig())
    synced.clear()
    for i, node in enumerate(("render", "recall", "critique")):
        w.node(node, {"round": i}, 0.01)
    assert synced == []
    w.finish({"round": 0, "done": True})
    assert [r["event"] for r in trace.read_trace("run-s")] == ["start", "node", "node", "node", "finish"]
    append_jsonl(tmp_path / "state.jsonl", {"a": 1})
    assert synced  # a durable log is fsynced as before


def test_memory_import_waits_for_an_interrupted_exploration_batch(tmp_path):
    """An exploration killed while writing a batch leaves explore_pending.json, and the next explore re-writes the
    batch's rule records whole: an import made in between had its rule counts and fields undone without a word.
    The import is refused, naming what to run, and changes nothing; without the pending batch it imports."""
    import pytest

    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    src = MemoryStore(tmp_path / "src", chroma_url="")
    src.export_json(tmp_path / "mem.json")
    src.close()
    dst = MemoryStore(tmp_path / "dst", chroma_url="")
    before = dst.version()
    (dst.path / "explore_pending.json").write_text('{"batch_key": "k"}', encoding="utf-8")
    with pytest.raises(InputError, match="interrupted while it was being written.*hmrcritic explore"):
        dst.import_json(tmp_path / "mem.json")
    assert dst.version() == before
    (dst.path / "explore_pending.json").unlink()
    res = dst.import_json(tmp_path / "mem.json")  # once the plan is gone: every rule of the file accounted for
    n_rules = len(json.loads((tmp_path / "mem.json").read_text(encoding="utf-8"))["rules"])
    assert n_rules and res["rules_added"] + res["rules_updated"] + res["rules_skipped"] == n_rules
    dst.close()
