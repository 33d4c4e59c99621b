"""Several processes on one memory, dataset or run folder (review s13, concurrency and crash safety).

Real subprocesses sequenced by pipes (no sleeps that race): a writer is stopped mid-batch while another
process reads, and resumes when told."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_export import cfg_for, fake_score, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.errors import AssetError
from hmrcritic.memory import MemoryStore, Prototype


def _proto(pid: str, seed: int) -> Prototype:
    v = np.random.default_rng(seed).normal(size=69)
    return Prototype(proto_id=pid, embedding=(v / np.linalg.norm(v)).tolist(), overall=5.0, motion_structure=5,
                     physical_feasibility=5, image_alignment=5)


# One exploration batch as explore._apply_plan writes it: contents, then the progress record, all under the
# write lock. It stops half-way (after the first prototype) until told to go on.
_HALF_BATCH = textwrap.dedent("""
    import json, sys
    import numpy as np
    from hmrcritic.memory import MemoryStore, Prototype

    def proto(pid, seed):
        v = np.random.default_rng(seed).normal(size=69)
        return Prototype(proto_id=pid, embedding=(v / np.linalg.norm(v)).tolist(), overall=5.0,
                         motion_structure=5, physical_feasibility=5, image_alignment=5)

    store = MemoryStore(sys.argv[1], seed_starter=False)
    with store._write():
        store.prototypes.add([proto("batch-first", 1)])
        print("half", flush=True)
        sys.stdin.readline()
        store.prototypes.add([proto("batch-second", 2)])
        (store.path / "explore_progress.json").write_text(json.dumps({"rounds_total": 1, "batches": ["b1"]}))
    print("done", flush=True)
""")


def test_memory_export_never_copies_half_a_write_batch(tmp_path, monkeypatch):
    """``memory export`` while an exploration applies a batch: the export read rules, prototypes, calibration
    and progress record one by one without the write lock, so it could copy half a batch (and a progress
    record that says the batch is done beside contents that lack part of it: a copy resumed from that export
    never learns the missing part). It must wait for the batch (here: time out, saying who holds it) instead."""
    path = tmp_path / "m"
    MemoryStore(path, seed_starter=False)
    script = tmp_path / "writer.py"
    script.write_text(_HALF_BATCH)
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "1")
    writer = subprocess.Popen([sys.executable, str(script), str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "half"
        reader = MemoryStore(path, read_only=True)
        try:
            reader.export_json(tmp_path / "mid.json")
        except AssetError as exc:  # waited for the batch, which did not end within the timeout
            assert "stayed locked by another writer" in str(exc) and f"pid {writer.pid}" in str(exc)
        else:
            got = json.loads((tmp_path / "mid.json").read_text())
            ids = {p["proto_id"] for p in got["prototypes"]}
            assert ids in (set(), {"batch-first", "batch-second"}), f"half a batch exported: {ids}"
        out, _ = writer.communicate("\n", timeout=60)
        assert writer.returncode == 0 and out.strip() == "done"
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    # once the batch is done the export holds all of it, with the progress record that says so
    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "30")
    reader.export_json(tmp_path / "after.json")
    got = json.loads((tmp_path / "after.json").read_text())
    assert {p["proto_id"] for p in got["prototypes"]} == {"batch-first", "batch-second"}
    assert got["explore_progress"]["batches"] == ["b1"]
    assert got["version"] == MemoryStore(path, read_only=True).version()


_RESETTER = textwrap.dedent("""
    import sys
    from hmrcritic.memory.store import hold_exclusive, resetting
    with hold_exclusive(sys.argv[1], "a memory reset"), resetting(sys.argv[1]):
        print("resetting", flush=True)
        sys.stdin.readline()
""")


def test_opening_a_memory_while_another_process_resets_it_says_so(tmp_path):
    """A process opening the memory while ``memory reset`` runs in another was told "a reset was cut short
    ... run reset --yes again": wrong (it is running; a second reset is refused as busy) and alarming. It now
    names the process resetting it; once that is done the memory opens, and a marker a killed reset left
    still says the reset was cut short."""
    path = tmp_path / "m"
    MemoryStore(path, seed_starter=False)
    script = tmp_path / "resetter.py"
    script.write_text(_RESETTER)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "resetting"
        with pytest.raises(AssetError, match=f"is being reset right now \\(pid {proc.pid}, since ") as err:
            MemoryStore(path, read_only=True)
        assert "cut short" not in str(err.value)
        proc.communicate("\n", timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    MemoryStore(path, read_only=True)
    # killed mid-reset: the marker stays, its process is gone
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "resetting"
    proc.kill()
    proc.wait()
    with pytest.raises(AssetError, match="a reset was cut short"):
        MemoryStore(path, read_only=True)


# ---- an export's worker processes outlive a parent killed with -9 ---------------------------------------------
_EXPORT_PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, sys
    from concurrent.futures import ProcessPoolExecutor
    from hmrcritic.alignment import export as E

    if __name__ == "__main__":
        ctx = E.WorkerContext(None, 2, 1, "builtin", E.DEFAULT_SCORER, False, None, None, 1)
        # as export._pool starts them (the model loads lazily, on the first group)
        pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=E._pool_init,
                                   initargs=(ctx,))
        print(pool.submit(os.getpid).result(), flush=True)
        sys.stdin.readline()
""")


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie nobody reaped is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status and "\nState:\tX" not in status


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_export_workers_exit_when_the_export_is_killed(tmp_path):
    """``hmrcritic export --workers K`` killed with -9 (or by the OOM killer) left its K spawned workers
    running for ever, each holding a model and the memory open: they wait on the task queue, whose write end
    they hold themselves, so the parent's death never reached them. A worker now exits once its parent is
    gone."""
    import os
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(_EXPORT_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    worker = 0
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(worker), "the export's worker outlived it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker and _running(worker):
            os.kill(worker, signal.SIGKILL)


# ---- what an export killed mid-write leaves behind ----------------------------------------------------------
def test_a_resumed_export_removes_the_temp_files_of_a_killed_one(tmp_path, model_path):  # noqa: F811
    """A kill -9 inside an atomic write leaves its temporary file (``.<name>.<random>.tmp``, up to a whole
    group's arrays); re-running the export resumed the dataset but kept every such file for ever (validate
    does not mention them). The resumed run removes them, and nothing else."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    out = tmp_path / "ds"
    export(cfg_for(out, model_path), inputs=make_inputs(2))
    left = [out / ".manifest.jsonl.a1b2c3.tmp", out / ".dataset.json.x9y8.tmp",
            out / D.GROUPS / ".0123abcd.hyps.npz.k7m1.tmp"]
    for f in left:
        f.write_bytes(b"half-written")
    keep = [out / ".notes.txt.tmp", out / "mine.tmp", out / D.GROUPS / "0123abcd.hyps.npz.bak"]
    for f in keep:
        f.write_bytes(b"the user's")
    s = export(cfg_for(out, model_path), inputs=make_inputs(3))
    assert (s.new_groups, s.groups) == (1, 3)
    assert [f.name for f in left if f.exists()] == []
    assert all(f.read_bytes() == b"the user's" for f in keep)
    assert D.validate_dataset(out).ok


# ---- an export whose memory another process writes meanwhile --------------------------------------------
def writing_score(sample, hypotheses, judge="builtin", memory=None, config=None, group_id=None):
    """fake_score; scoring input ``img001`` an exploration writes to the export's memory meanwhile."""
    import os

    if sample.sample_id == "img001":
        subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            from test_review_s13_concurrency import _proto
            from hmrcritic.memory import MemoryStore
            MemoryStore({os.environ["HMRCRITIC_TEST_MEMORY"]!r}).prototypes.add([_proto("learned", 3)])
        """)], check=True)
    return fake_score(sample, hypotheses, judge, memory, config, group_id)


def test_an_export_stops_when_its_memory_changes_under_it(tmp_path, model_path, monkeypatch):  # noqa: F811
    """``hmrcritic export`` while an exploration (or ``critique --learn``) writes the same memory: the workers'
    read-only stores see the new rules and prototypes, so later groups were scored by another memory, yet
    every record and the header named the version the export started with and ``export validate`` said OK
    (shown for real: the same 90 wild groups, 65 with other scores). The export now stops at the first group
    written after the change, keeps the ones before, and a re-run is refused (its memory differs)."""
    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export
    from hmrcritic.errors import InputError

    mem = tmp_path / "mem"
    before = MemoryStore(mem).version()
    monkeypatch.setenv("HMRCRITIC_TEST_MEMORY", str(mem))
    out = tmp_path / "ds"
    cfg = cfg_for(out, model_path, use_memory=True, memory=str(mem),
                  score_group="test_review_s13_concurrency:writing_score")
    with pytest.raises(InputError, match="changed while this export ran") as err:
        export(cfg, inputs=make_inputs(3))
    assert before in str(err.value) and "the 1 group(s) written so far are kept" in str(err.value)
    recs = D.read_manifest(out)
    assert [r.input_id for r in recs] == ["img000"] and D.read_header(out).memory_version == before
    with pytest.raises(InputError, match="different memory_version"):
        export(cfg, inputs=make_inputs(3))
    # a memory nothing writes to: unchanged behaviour, every group
    cfg2 = cfg_for(tmp_path / "ds2", model_path, use_memory=True, memory=str(mem))
    assert export(cfg2, inputs=make_inputs(3)).groups == 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
