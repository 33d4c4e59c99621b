"""Session 34 (lead): follow-ups of the session's walk-throughs that landed outside the helpers' files."""

from __future__ import annotations

import pytest

from hmrcritic.agent.api import critique_group

pytestmark = pytest.mark.usefixtures("small_prior")


def test_trace_last_shows_the_finished_run_a_critique_returned_again(tmp_path, monkeypatch):
    """``critique`` of a group already critiqued under the same settings prints "run: X (finished earlier)";
    ``trace --last`` then showed whatever ran before it (another group's run), not X."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.trace import read_trace, resolve_run
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    memory = MemoryStore(tmp_path / "mem")
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    first = critique_group(*make_group(1, sample_id="walk-a")[:2], memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "a")
    other = critique_group(*make_group(2, sample_id="walk-b")[:2], memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "b")
    assert resolve_run(last=True).stem == other.run_id
    again = critique_group(*make_group(1, sample_id="walk-a")[:2], memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "a")
    assert again.finished_earlier and again.run_id == first.run_id
    assert resolve_run(last=True).stem == first.run_id
    assert read_trace(last=True)[0]["run_id"] == first.run_id


def test_an_unreachable_server_from_the_environment_says_where_its_address_came_from(tmp_path, monkeypatch):
    """A Chroma address set once in a profile (``HMRCRITIC_CHROMA_URL``) is easily forgotten: `memory stats` failed
    with "cannot reach the Chroma server at …" and no word of the variable, nor that unsetting it uses the folder.
    An address given explicitly (``--chroma-url``) says nothing of the variable."""
    import socket

    from hmrcritic import config
    from hmrcritic.errors import AssetError
    from hmrcritic.memory.store import MemoryStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", f" {url}\r")
    with pytest.raises(AssetError, match=r"from HMRCRITIC_CHROMA_URL; unset it to use the memory folder on disk"):
        MemoryStore(tmp_path / "m", chroma_url=config.env_chroma_url())
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL")
    with pytest.raises(AssetError, match="cannot reach") as given:
        MemoryStore(tmp_path / "m", chroma_url=url)
    assert "HMRCRITIC_CHROMA_URL" not in str(given.value)


def test_a_dry_prune_says_what_it_would_free(tmp_path, capsys):
    """``runs prune --dry-run --json`` reported ``bytes_after == bytes_before`` — a script read it as "a prune frees
    nothing". Its ``bytes_after`` is now the estimate: the runs folder less the files it would remove, which a
    real prune of the same entries then frees (the checkpoint database's compaction aside: none here)."""
    import os
    import time

    from hmrcritic.agent.runs import prune_runs, runs_usage

    root = tmp_path / "runs"
    old = time.time() - 30 * 86400
    for part, name, size in (("traces", "old.jsonl", 5000), ("traces", "new.jsonl", 700),
                             ("frozen-memory", "snap/chroma.sqlite3", 20000), ("evaluate", "key/result.json", 300)):
        p = root / part / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        if name != "new.jsonl":
            os.utime(p, (old, old))
            os.utime(p.parent, (old, old))
    before = runs_usage(root)["total_bytes"]
    dry = prune_runs(7, root=root, dry_run=True)
    assert dry["bytes_before"] == before and dry["bytes_after"] == before - 25300
    assert runs_usage(root)["total_bytes"] == before  # nothing removed
    real = prune_runs(7, root=root)
    # what a real prune leaves besides: the pointer at the newest trace left (``traces/LAST``) and its lock file
    assert real["removed"] == dry["removed"] and 0 <= real["bytes_after"] - dry["bytes_after"] < 100


def test_train_base_refuses_an_export_folder_as_its_out(tmp_path):
    """``train-base --out DATASET_DIR`` wrote model.pt, state.pt and log.jsonl in among an export's files (found by
    the session's alignment walk); it is refused before anything is written."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.train import TrainConfig, train_base

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text("{}")
    with pytest.raises(InputError, match="is a group preference dataset"):
        train_base(TrainConfig(steps=1), ds)
    assert sorted(p.name for p in ds.iterdir()) == ["dataset.json"]


def test_metrics_read_a_reversed_numpy_view():
    """``group_spearman(np.arange(5.)[::-1], …)`` raised "At least one stride … negative" (torch refuses numpy
    views with negative strides); found by the session's mutation audit of mining."""
    import numpy as np

    from hmrcritic.hmr.metrics import spearman

    x = np.arange(5.0)
    assert float(spearman(x[::-1], x)) == pytest.approx(-1.0)
    assert float(spearman(x[::-1].copy(), x)) == pytest.approx(-1.0)


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(tmp_path):
    """A Ctrl-C before train-base's first checkpoint said "before the first checkpoint", and the CLI went on "run the
    same command again to resume" — nothing was saved, the re-run starts over (found by the session's model walk)."""
    import sys
    from pathlib import Path

    from hmrcritic.hmr import train
    from hmrcritic.hmr.diffusion import DiffusionConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_diffusion import _tiny_data

    def interrupted(_rec):
        raise KeyboardInterrupt

    cfg = train.TrainConfig(steps=12, batch_size=8, warmup=2, lr=3e-3, log_every=1, ckpt_every=5, threads=1,
                            model=DiffusionConfig(d_model=32, layers=1, heads=2))
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train.train_base(cfg, tmp_path / "run", data=_tiny_data(32, 0), progress=interrupted, notify=said.append)
    assert not (tmp_path / "run" / "state.pt").exists()
    assert any("before the first checkpoint (every 5 steps): nothing was saved, so the same command starts over"
               in line for line in said), said


def test_a_second_person_warning_names_the_flag_on_both_commands(tmp_path):
    """The several-people warning told a `critique` user to run `sample --person I` (found by the critique walk)."""
    import json
    import warnings

    from hmrcritic.hmr.data import read_keypoints_json

    person = [[100.0 + 10 * k, 200.0 + 5 * k, 0.9] for k in range(17)]
    path = tmp_path / "two.json"
    path.write_text(json.dumps([person, [[x + 300, y, c * 0.5] for x, y, c in person]]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_keypoints_json(path)
    text = " ".join(str(w.message) for w in caught)
    assert "`--person I` on sample or critique" in text and "`sample --person" not in text


def test_another_judge_on_a_finished_group_names_both_ways_out(tmp_path):
    """A group critiqued with one judge and asked again with another was refused in API words only ("use
    fresh=True (--fresh)"); `--group-id`, which keeps the first result too, was not named."""
    from test_agent_graph import FlakyJudge, cfg, make_group

    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(tmp_path / "mem")
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    s, h, _ = make_group(5, sample_id="two-judges")
    critique_group(s, h, memory=memory, config=cfg(), checkpointer=saver, run_dir=tmp_path / "g")
    with pytest.raises(InputError, match=r"\(--fresh\) to critique it again with .* \(replacing it\), or another "
                                         r"group_id= \(--group-id\) to keep both"):
        critique_group(s, h, judge=FlakyJudge(), memory=memory, config=cfg(), checkpointer=saver,
                       run_dir=tmp_path / "g")


def test_a_vlm_judge_without_endpoint_names_the_flag_every_judge_command_takes(monkeypatch):
    """explore, explore-eval, learning-curve, export: the refusal named only the variables, not the `--base-url` every
    command with --judge takes (found by the critic walk; critique checks before reading its input)."""
    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.errors import InputError

    for name in ("HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE", "HMRCRITIC_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match=r"give --base-url URL \(or set HMRCRITIC_BASE_URL\) for a local server"):
        VLMJudge()
