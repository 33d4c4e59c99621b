"""Review s19 (shared home): commands run side by side on one HMRCRITIC_HOME.

Each race is widened deterministically: one side is held at its critical point (a patched function waiting on an
event, or a real second process) while the other side runs, instead of hoping the two collide."""

from __future__ import annotations

import threading

from hmrcritic.agent import trace


# ---- trace --last: an export's (or prune's) repoint of LAST beside a critique starting in another process --------
def test_repointing_last_never_undoes_the_pointer_of_a_run_that_started_meanwhile(tmp_path, monkeypatch):
    """An export forgets each stored group's trace and points LAST at the newest trace left. It read LAST (naming
    the group it had just forgotten), listed the traces, and wrote the newest of them; a critique that started
    between the listing and the write had its pointer overwritten with that older run, so ``trace --last`` right
    after the user's critique showed another run (or "no runs recorded yet" when no other trace was left)."""
    from hmrcritic.agent.state import AgentConfig

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    d = trace.traces_dir()
    d.mkdir(parents=True)
    (d / "20250101-earlier.jsonl").write_text("{}\n")
    (d / "LAST").write_text("20250102-exported-group\n")  # its trace was just deleted by the export
    listed, go_on = threading.Event(), threading.Event()
    real = trace._traces_left

    def held_after_listing(folder):
        left = real(folder)
        listed.set()
        go_on.wait(30)  # the export is held here, between the listing and its write
        return left

    monkeypatch.setattr(trace, "_traces_left", held_after_listing)
    export = threading.Thread(target=trace.repoint_last)
    export.start()
    assert listed.wait(30)
    writer = trace.TraceWriter("20250103-users-critique", "g")
    critique = threading.Thread(target=writer.start, args=(AgentConfig(),))
    critique.start()
    critique.join(2.0)  # unfixed: its pointer is written now; fixed: it waits for the export's repoint
    go_on.set()
    export.join(30)
    critique.join(30)
    writer.finish({})
    assert (d / "LAST").read_text() == "20250103-users-critique\n"
    assert trace.resolve_run(last=True).name == "20250103-users-critique.jsonl"


def test_repoint_last_on_a_missing_traces_folder_does_nothing(tmp_path):
    trace.repoint_last(tmp_path / "no-traces")
    assert not (tmp_path / "no-traces").exists()


# ---- runs prune beside an evaluate-critic (or a demo / explore-eval reading a memory snapshot) ---------------------
def _age(path, days):
    import os
    import time

    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_prune_keeps_an_evaluation_cache_whose_memory_is_being_written_now(tmp_path):
    """``runs prune`` (7 days) judged ``evaluate/<key>`` and ``frozen-memory/<digest>`` by the folder's own mtime,
    which changes only when an entry directly in it comes or goes: an evaluate-critic resumed on a cache made a week
    ago explores into ``<key>/memory`` without touching ``<key>`` itself, and prune removed the whole folder under
    it (its next write failed: "memory … lacks collection 'semantic_rules'; run `hmrcritic memory reset`"). The
    same for a snapshot reused while its source is unchanged. What is written in them now keeps them."""
    from hmrcritic.agent.runs import prune_runs

    root = tmp_path / "runs"
    busy = root / "evaluate" / "busy-key"
    (busy / "memory").mkdir(parents=True)
    (busy / "memory" / "chroma.sqlite3").write_bytes(b"written a moment ago by the running exploration")
    _age(busy / "memory", 10)
    _age(busy, 10)
    snapshot = root / "frozen-memory" / "0123456789abcdef"
    (snapshot / "segment").mkdir(parents=True)
    (snapshot / "chroma.sqlite3").write_bytes(b"old")
    (snapshot / "segment" / "data_level0.bin").write_bytes(b"rewritten when the snapshot was opened just now")
    for p in (snapshot / "chroma.sqlite3", snapshot / "segment", snapshot):
        _age(p, 10)
    stale = root / "evaluate" / "stale-key"
    (stale / "memory").mkdir(parents=True)
    (stale / "memory" / "chroma.sqlite3").write_bytes(b"old")
    for p in (stale / "memory" / "chroma.sqlite3", stale / "memory", stale):
        _age(p, 10)

    dry = prune_runs(7, root=root, dry_run=True)
    assert dry["removed"]["evaluate"] == 1 and dry["removed"]["frozen-memory"] == 0
    out = prune_runs(7, root=root)
    assert out["removed"]["evaluate"] == 1 and out["removed"]["frozen-memory"] == 0
    assert (busy / "memory" / "chroma.sqlite3").is_file() and (snapshot / "segment" / "data_level0.bin").is_file()
    assert not stale.exists()  # what nothing touched for 10 days still goes


# ---- data generate beside a command reading the same split ------------------------------------------------------
def test_a_split_regenerated_while_a_command_reads_it_is_said_not_mixed(tmp_path):
    """Shards are read lazily. ``hmrcritic data generate --split train --seed 5`` in another shell, beside an
    exploration (or export, evaluation) reading ``train`` for hours, swapped a new folder in under it: the open set
    then read the new generation's shards under its old manifest and silently mixed two splits (the same ids for
    other scenes); with another --n it failed as "damaged … delete the split", the new intact one."""
    import numpy as np
    import pytest

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("test", tmp_path / "test", n=4, seed=1, shard_size=2, quiet=True)
    scenes = SceneSet(folder)
    kept = scenes[0].keypoints.copy()
    generate_split("test", folder, n=4, seed=2, shard_size=2, quiet=True)  # the other shell's `data generate`
    assert np.array_equal(scenes[0].keypoints, kept)  # shard 0 was read before: kept as it was
    with pytest.raises(AssetError, match="was regenerated while this command was reading it"):
        scenes[3]  # shard 1: of the other generation
    generate_split("test", folder, n=6, seed=1, shard_size=2, quiet=True)  # another size: not "damaged"
    with pytest.raises(AssetError, match="was regenerated while") as err:
        scenes.arrays(["keypoints"])
    assert "delete" not in str(err.value)
    fresh = SceneSet(folder)  # opened afresh: the new split, whole
    assert len(fresh) == 6 and fresh.arrays(["keypoints"])["keypoints"].shape[0] == 6


def test_a_regenerated_wild_split_does_not_pair_old_scenes_with_new_labels(tmp_path):
    import pytest

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("wild", tmp_path / "wild", n=3, seed=1, quiet=True)
    scenes = SceneSet(folder)
    scenes[0]
    generate_split("wild", folder, n=3, seed=2, quiet=True)
    with pytest.raises(AssetError, match="was regenerated while"):
        scenes.eval_labels()


# ---- export beside a process rewriting the checkpoint it samples from -------------------------------------------
def test_an_export_never_samples_from_weights_other_than_those_its_dataset_names(tmp_path, monkeypatch):
    """The export hashes its --model once, for the dataset header and every record; its workers load the file
    themselves, later (a spawned worker imports torch first, a dead Ray actor is replaced hours on). A checkpoint
    rewritten in between by another process on the home (train-base finishing into that folder, a finetune's
    --out, ``train-base --ship``) was sampled from while the dataset named the old weights: finetuning then
    aligned against preferences about another model's samples, with nothing said. Held here at that point: the
    file is replaced right after the export hashed it."""
    import torch
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import export as E
    from hmrcritic.alignment.finetune import state_dict_hash
    from hmrcritic.hmr.diffusion import load_model, save_model

    path = tiny_model(tmp_path / "model.pt")
    real_hash = E.model_hash

    def hashed_then_rewritten(model_path):
        got = real_hash(model_path)
        other = load_model(model_path)
        with torch.no_grad():
            other.joint_out.weight.add_(0.5)  # the other process's new weights
        save_model(other, model_path)
        return got

    monkeypatch.setattr(E, "model_hash", hashed_then_rewritten)
    summary = E.export(cfg_for(tmp_path / "ds", path), inputs=make_inputs(2))  # the test scorer: no agent needed
    from hmrcritic.alignment.dataset import read_header

    sampled_by = state_dict_hash(load_model(path))
    named = read_header(tmp_path / "ds").model_hash
    assert summary.groups == 0 or named == sampled_by, "groups sampled by other weights than the dataset names"
    assert summary.failures == 2 and "changed since this export started" in summary.first_failure
