"""Session 28, the lead's fixes outside the helpers' files."""

from __future__ import annotations

import json


def test_regenerating_a_split_whose_folder_is_a_link_regenerates_it_where_the_link_points(tmp_path, body):
    """A split folder that is a link (the data kept on another drive) was moved aside as a link: the new split
    landed in the home in its place and the link stayed beside it as an `.old-*` rmtree cannot remove."""
    from hmrcritic.hmr.data import generate_split, load_split

    drive = tmp_path / "drive" / "test"
    home_data = tmp_path / "data"
    home_data.mkdir()
    link = home_data / "test"
    generate_split("test", out_dir=drive, n=2, body=body, quiet=True)
    link.symlink_to(drive, target_is_directory=True)
    first = json.loads((drive / "manifest.json").read_text())["shards"][0]["sha256"]

    assert generate_split("test", out_dir=link, n=3, seed=7, body=body, quiet=True) == link
    assert link.is_symlink() and link.resolve() == drive.resolve()
    manifest = json.loads((drive / "manifest.json").read_text())
    assert manifest["n"] == 3 and manifest["shards"][0]["sha256"] != first
    assert sorted(p.name for p in home_data.iterdir()) == [".test.lock", "test"]  # no `.old-*` left behind
    assert not [p.name for p in drive.parent.iterdir() if p.name.startswith((".old-", ".staging-"))]
    assert len(load_split("test", root=home_data)) == 3


def test_the_table_scores_json_and_report_say_what_scale_overall_is_on(tmp_path, capsys, monkeypatch):
    """Once exploration has fitted a score calibration, the builtin judge puts overall on the true-error scale while
    the axes stay its own scores: a 10 / 10 / 9.6 hypothesis at overall 2.5, and every overall falling from ~8 to
    ~2.5 after ``explore``, with nothing in the table, scores.json or the report saying why."""
    from hmrcritic.cli import main
    from hmrcritic.memory.schema import ScoreCalibration
    from hmrcritic.memory.store import MemoryStore

    mem = tmp_path / "mem"
    args = ["critique", "--scene", "test:0", "-n", "4", "--no-render", "--memory-dir", str(mem), "--fresh"]
    assert main([*args, "--out", str(tmp_path / "raw")]) == 0
    out = capsys.readouterr().out
    assert "overall: the judge's own 0–10 score, no score calibration applied — exploring a memory fits one" in out
    raw = json.loads((tmp_path / "raw" / "scores.json").read_text())
    assert raw["score_calibration"] is None

    with MemoryStore(mem) as store:
        store.set_calibration(ScoreCalibration(slope=1.5, intercept=-1.0, groups=32, hypotheses=512, split="train",
                                               pearson_before=0.2, pearson_after=0.3))
    assert main([*args, "--out", str(tmp_path / "cal")]) == 0
    out = capsys.readouterr().out
    assert "overall: on the true-error scale by the memory's score calibration (fitted on 32 labelled groups)" in out
    cal = json.loads((tmp_path / "cal" / "scores.json").read_text())
    assert cal["score_calibration"]["slope"] == 1.5 and cal["score_calibration"]["judge"] == "builtin"
    assert cal["ranking"] == raw["ranking"]  # an increasing map: the same order, other numbers
    assert [s["overall"] for s in cal["scores"]] != [s["overall"] for s in raw["scores"]]
    assert [s["motion_structure"] for s in cal["scores"]] == [s["motion_structure"] for s in raw["scores"]]
    report = (tmp_path / "cal" / "report.html").read_text()
    assert "true-error scale by the memory" in report

    # said of the critique, not of the memory: a calibration switched off is not "a memory without one"
    monkeypatch.setenv("HMRCRITIC_USE_CALIBRATION", "0")
    assert main([*args, "--out", str(tmp_path / "off")]) == 0
    assert "overall: the judge's own 0–10 score, no score calibration applied" in capsys.readouterr().out
    assert json.loads((tmp_path / "off" / "scores.json").read_text())["score_calibration"] is None
    # a scores.json from before the field says nothing about the scale rather than something false
    from hmrcritic.agent.report import write_report

    del cal["score_calibration"]
    write_report(cal, tmp_path / "old")
    assert "overall:" not in (tmp_path / "old" / "report.html").read_text()


def test_the_default_memory_says_when_it_was_never_explored(tmp_path, monkeypatch, capsys):
    """After ``make demo`` (which explores a memory of its own under out/demo) the README's next steps critique and
    export with the default memory, the unexplored starter memory, and nothing said so."""
    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "default-memory"))
    critique = ["critique", "--scene", "test:0", "-n", "2", "--no-render", "--fresh"]
    assert main([*critique, "--out", str(tmp_path / "c1")]) == 0
    err = capsys.readouterr().err
    assert f"note: the memory at {tmp_path / 'default-memory'} was never explored" in err
    assert main([*critique, "--memory-dir", str(tmp_path / "default-memory"), "--out", str(tmp_path / "c2")]) == 0
    assert "never explored" not in capsys.readouterr().err  # a memory named on purpose is the user's choice

    assert main(["export", "--split", "test", "--limit", "1", "--num-generations", "2", "--out",
                 str(tmp_path / "ds")]) == 0
    out, err = capsys.readouterr()
    assert "never explored" in err.splitlines()[-1] and "never explored" not in out

    # what exploration leaves in the memory folder (its record of the splits it explored on) silences it
    monkeypatch.setenv("HMRCRITIC_USE_MEMORY", "0")  # no memory read: nothing to say about it
    assert main([*critique, "--out", str(tmp_path / "c4")]) == 0
    assert "never explored" not in capsys.readouterr().err
    monkeypatch.delenv("HMRCRITIC_USE_MEMORY")

    record = '{"splits": {"train": {"group_ids": []}}}'
    (tmp_path / "default-memory" / "explored_on.json").write_text(record, encoding="utf-8")
    assert main([*critique, "--out", str(tmp_path / "c3")]) == 0
    assert "never explored" not in capsys.readouterr().err


def test_a_split_rewritten_at_the_same_inode_under_a_reader_is_said_regenerated(tmp_path):
    """A reader told a regenerated split by its manifest's inode alone; file systems reuse a deleted file's inode
    (a split regenerated twice under a reader showed its manifest at the first one's inode again: seen under a
    parallel test run) and the reader then took another generation's shards as damaged, or read them as its own.
    Rewriting every file in place keeps each inode, the worst case of that reuse."""
    import pytest

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet, generate_split

    folder = generate_split("test", tmp_path / "test", n=4, seed=1, shard_size=2, quiet=True)
    other = generate_split("test", tmp_path / "other", n=4, seed=2, shard_size=2, quiet=True)
    scenes = SceneSet(folder)
    scenes[0]  # shard 0 read under the first generation
    for name in ("shard_00001.npz", "manifest.json"):
        inode = (folder / name).stat().st_ino
        with open(folder / name, "r+b") as fh:  # in place: the same inode
            fh.write((other / name).read_bytes())
            fh.truncate()
        assert (folder / name).stat().st_ino == inode
    with pytest.raises(AssetError, match="was regenerated while this command was reading it"):
        scenes[3]


def test_a_reader_is_not_stopped_by_a_touched_manifest_and_export_needs_no_images(tmp_path):
    """The manifest's identity is its content: stat times (a ``touch``, a sync tool, an NFS client's cached
    attributes) stopped a reader as if the split had been regenerated. Export checks the shards' checksums only: a
    split whose rendered images were removed still exports (the builtin judge draws no grid for it)."""
    import os
    import shutil

    import pytest

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet, generate_split, verify_split_files

    folder = generate_split("test", tmp_path / "test", n=4, seed=1, shard_size=2, render_images=True, quiet=True)
    scenes = SceneSet(folder)
    scenes[0]
    os.utime(folder / "manifest.json", ns=(1, 1))
    assert scenes[3].keypoints.shape == (17, 3)  # read, not "regenerated while this command was reading it"

    shutil.rmtree(folder / "images")
    with pytest.raises(AssetError, match="images"):
        verify_split_files(scenes.manifest, folder)
    verify_split_files(scenes.manifest, folder, labels=False, images=False)  # export's check
