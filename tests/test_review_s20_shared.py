"""Session 20: commands that share a home and run side by side — ``runs prune`` against what a running command
holds (a memory snapshot, an evaluation cache), two ``sample`` runs into one ``--out``, and first-use data staging
on a home shared across hosts."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest


# ---- runs prune beside a command holding a memory snapshot or an evaluation cache ---------------------------------
def test_prune_leaves_a_memory_snapshot_a_store_still_reads(tmp_path):
    """``runs prune --older-than 0`` removed ``frozen-memory/<digest>`` while a demo, learning-curve or evaluation
    was reading it through the store :func:`frozen_copy` returned: its next read failed. The snapshot is held in
    use for the store's life; once the store is gone, prune removes it, and the next frozen copy makes it again."""
    from hmrcritic.agent.explore import frozen_copy
    from hmrcritic.agent.runs import prune_runs
    from hmrcritic.memory.store import MemoryStore

    src = tmp_path / "memory"
    MemoryStore(path=src).close()  # a starter memory
    root = tmp_path / "runs"
    frozen = frozen_copy(src, root=root / "frozen-memory")
    rules = frozen.stats()
    out = prune_runs(0, root=root)
    assert out["removed"]["frozen-memory"] == 0
    assert frozen.stats() == rules  # still readable: nothing was removed under it

    frozen.close()
    del frozen
    gc.collect()
    out = prune_runs(0, root=root)
    assert out["removed"]["frozen-memory"] == 1 and not any((root / "frozen-memory").iterdir())
    again = frozen_copy(src, root=root / "frozen-memory")
    assert again.stats() == rules


def test_a_snapshot_copy_killed_mid_way_is_cleared_by_the_next_copy_not_a_live_one(tmp_path):
    """A kill while a memory snapshot was copied left its ``.copy-*`` folder (a whole memory's size) until the
    user ran ``runs prune``. The next snapshot copy removes such leftovers itself — never one another process is
    filling right now (it holds its own)."""
    from hmrcritic.agent.explore import frozen_copy
    from hmrcritic.agent.runs import hold_shared
    from hmrcritic.memory.store import MemoryStore

    src = tmp_path / "memory"
    MemoryStore(path=src).close()
    root = tmp_path / "frozen-memory"
    dead = root / ".copy-killed"
    (dead / "m").mkdir(parents=True)
    (dead / "m" / "chroma.sqlite3").write_bytes(b"half a copy")
    live = root / ".copy-live"
    live.mkdir()
    fd = hold_shared(live)  # another process filling its copy right now
    try:
        frozen = frozen_copy(src, root=root)
        assert not dead.exists() and live.exists()
        assert frozen.stats()["rules"] >= 1
    finally:
        os.close(fd)


def test_a_holder_that_waited_for_prune_learns_its_folder_is_gone(tmp_path):
    """A command asking for a folder while prune holds it for removal waits, and is told the folder went (it
    then makes it again) instead of holding the lock of a file that no longer names anything."""
    import shutil

    from hmrcritic.agent.runs import _held_for_removal, hold_shared

    folder = tmp_path / "snap"
    folder.mkdir()
    got: list = []
    with _held_for_removal(folder) as free:
        assert free

        def ask():
            try:
                got.append(hold_shared(folder))
            except FileNotFoundError as exc:
                got.append(exc)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.3)
        assert not got  # waits while prune holds it
        shutil.rmtree(folder)
    t.join(10)
    assert len(got) == 1 and isinstance(got[0], FileNotFoundError)


@pytest.fixture()
def small_world(monkeypatch, tmp_path, small_prior):
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))  # prune only this test's runs
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")


@pytest.mark.slow
def test_evaluate_critic_survives_a_prune_of_everything_beside_it(small_world):
    """``runs prune --older-than 0`` beside an evaluate-critic removed its cache (the memory it explored, which a
    re-run then had to explore again; removed while it explored, the next memory write failed) and the snapshot it
    was scoring from (read on through files still open, by luck of timing). Both are held in use while it runs."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic
    from hmrcritic.agent.runs import prune_runs

    pruned: list[dict] = []

    def progress(stage, i, n):
        if stage.startswith("score") and not pruned:
            pruned.append(prune_runs(0))

    out = evaluate_critic(split="test", num_groups=2, num_generations=4, warmup_groups=3, source="perturbed",
                          variants=["full"], progress=progress)
    assert pruned and pruned[0]["removed"]["evaluate"] == 0 and pruned[0]["removed"]["frozen-memory"] == 0
    assert out["num_groups"] == 2
    from pathlib import Path

    assert (Path(out["workdir"]) / "result.json").is_file()
    # finished: nothing holds them any more
    gc.collect()
    after = prune_runs(0)
    assert after["removed"]["evaluate"] == 1 and after["removed"]["frozen-memory"] >= 1


# ---- two `hmrcritic sample` runs into one --out -------------------------------------------------------------------
def _tiny_item():
    from types import SimpleNamespace

    import numpy as np
    from test_diffusion import _K

    kp = np.concatenate([np.random.default_rng(0).uniform(150, 450, (17, 2)), np.ones((17, 1))], 1)
    return SimpleNamespace(keypoints=kp, K=_K(1)[0].numpy(), image_size=np.array([640.0, 480.0]), sample_id="s")


def test_a_second_sample_into_a_folder_being_written_is_refused_and_touches_nothing(tmp_path):
    """Two ``hmrcritic sample`` runs into one --out each cleared and wrote the numbered files: the folder ended
    with one run's hypotheses beside the other's renders, and summary.json described only one. The second is now
    refused at once, naming the first, and leaves the folder as the first writes it."""
    import torch
    from test_diffusion import TINY

    from hmrcritic.errors import InputError
    from hmrcritic.hmr.diffusion import HMRDiffusion, sample_to_dir
    from hmrcritic.io import exclusive_lock

    torch.manual_seed(0)
    model = HMRDiffusion(TINY).eval()
    first = sample_to_dir(model, _tiny_item(), tmp_path, num_generations=3, steps=2, render=False, obj=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    busy = "another sample into this folder is running — a sample \\(pid"
    with exclusive_lock(tmp_path / ".sample.lock", "a sample"), pytest.raises(InputError, match=busy):
        sample_to_dir(model, _tiny_item(), tmp_path, num_generations=2, steps=2, render=False, seed=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")} == before
    again = sample_to_dir(model, _tiny_item(), tmp_path, num_generations=2, steps=2, render=False, seed=1)
    assert again["num_generations"] == 2 and first["num_generations"] == 3
    assert not list(tmp_path.glob("hyp_*.obj"))  # the finished second run cleared the first's meshes


# ---- first-use data staging on a data folder shared across hosts --------------------------------------------------
def test_staging_folders_of_another_host_are_judged_by_age_not_by_pid(tmp_path, monkeypatch):
    """A generation killed mid-way leaves ``.staging-<split>-<pid>`` beside the split; the next one removed every
    such folder whose pid was not a live process *here* — on a data folder shared across machines, the staging
    folder another machine was writing right then. The host is now in the name: this host's leftovers still go by
    pid (and a name without a host, from an older release, is this host's); another host's go once untouched for a
    day."""
    import os
    import subprocess
    import sys

    from hmrcritic.hmr import data

    monkeypatch.setattr(data, "_this_host", lambda: "here-host")
    out = tmp_path / "test"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that ran and is gone

    def made(name, days=0.0):
        p = tmp_path / name
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "shard_00000.npz").write_bytes(b"x")
        t = time.time() - days * 86400
        for q in (p / "sub" / "shard_00000.npz", p / "sub", p):
            os.utime(q, (t, t))
        return p

    live_elsewhere = made(f".staging-test-{dead}@other-host")  # written right now by a machine we cannot see
    stale_elsewhere = made(f".old-test-{dead}@other-host", days=2)
    dead_here = made(f".staging-test-{dead}@here-host")
    dead_legacy = made(f".staging-test-{dead}")
    mine = made(f".staging-test-{os.getpid()}@here-host")
    other_split = made(f".staging-train-{dead}@here-host")
    removed = set(data._remove_dead_leftovers(out))
    assert removed == {stale_elsewhere, dead_here, dead_legacy}
    assert live_elsewhere.exists() and mine.exists() and other_split.exists()
    assert data._leftover_name("staging", out).name == f".staging-test-{os.getpid()}@here-host"


# ---- a learning curve resumed under other agent settings ----------------------------------------------------------
def test_a_learning_curve_is_not_resumed_under_other_agent_settings(tmp_path, monkeypatch):
    """An interrupted ``learning-curve`` re-run with another ``HMRCRITIC_MAX_REFLECTIONS`` (or rules_k, prototype
    weight, …) kept its old rows and added rows scored under the new settings, in one table. Those settings are now
    part of what a resumed curve must match, as evaluate-critic's cache key already had them."""
    import json
    from types import SimpleNamespace

    from test_review_s26_fuzz2 import curve_row

    from hmrcritic.agent import learning_curve as lc

    held = [SimpleNamespace(group_id="test-000001")]

    def settings():
        return lc._curve_settings("train", "test", 8, held, None, 16, 0, "perturbed", "builtin", None)

    monkeypatch.setenv("HMRCRITIC_MAX_REFLECTIONS", "2")
    first = settings()
    mem = SimpleNamespace(path=tmp_path / "memory")
    (tmp_path / lc.PARTIAL_FILE).write_text(json.dumps(
        {"memory": str(mem.path), "settings": first, "rows": [curve_row(0)]}), encoding="utf-8")
    monkeypatch.setenv("HMRCRITIC_MAX_REFLECTIONS", "0")
    rows, why = lc._resume_rows(mem, tmp_path, settings())
    assert rows == [] and "made with other settings (agent)" in why
    monkeypatch.setenv("HMRCRITIC_MAX_REFLECTIONS", "2")
    assert settings() == first


# ---- a split made with one SMPL file, used with another at the same path -----------------------------------------
def test_a_split_follows_the_body_files_content_not_its_path(tmp_path, monkeypatch):
    """A split counted as current while the body model's path string matched its manifest: a SMPL file replaced at
    the same path (neutral → male) kept the scenes posed with the old body, which evaluation then paired with labels
    the new body poses; and the same file named by another path (relative, absolute) regenerated everything. The
    manifest records the file's sha256, and the split follows it."""
    import pickle

    import numpy as np

    from hmrcritic.hmr import body as B
    from hmrcritic.hmr import data, mannequin

    B.clear_cache()
    src = mannequin.ensure_mannequin()
    arrays = B.read_model_arrays(src)
    user = tmp_path / "models" / "SMPL_NEUTRAL.pkl"
    user.parent.mkdir()
    user.write_bytes(src.read_bytes())
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(user))
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")
    try:
        first = data.load_split("test", quiet=True)
        assert first.manifest["body_sha256"] == B.load_body_model().source_sha256
        made = (first.folder / "manifest.json").stat().st_mtime_ns
        first_kp = first.arrays(["keypoints"])["keypoints"]

        # the same file by another path: still current
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HMRCRITIC_BODY_MODEL", "models/SMPL_NEUTRAL.pkl")
        B.clear_cache()
        assert (data.load_split("test", quiet=True).folder / "manifest.json").stat().st_mtime_ns == made

        # another body at the same path: regenerated with it
        other = dict(arrays, v_template=np.asarray(arrays["v_template"]) * 1.1)
        user.write_bytes(pickle.dumps(other, protocol=4))
        B.clear_cache()
        again = data.load_split("test", quiet=True)
        assert again.manifest["body_sha256"] == B.load_body_model().source_sha256 != first.manifest["body_sha256"]
        assert not np.allclose(again.arrays(["keypoints"])["keypoints"], first_kp)  # posed with the new body
    finally:
        B.clear_cache()


def test_a_cuda_body_model_on_a_torch_without_cuda_is_one_line(monkeypatch):
    """``load_body_model(device="cuda")`` on a CPU-only torch (Python API; the CLI checks the device first) raised
    torch's bare AssertionError ("Torch not compiled with CUDA enabled"), not the InputError its docstring promises."""
    import torch

    from hmrcritic.errors import InputError
    from hmrcritic.hmr.body import load_body_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no usable CUDA"):
        load_body_model(device="cuda")
