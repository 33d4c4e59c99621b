"""Review session 27, small leftovers: the demo's memory stores, the memory's side records, split manifest flags,
non-finite floats in the JSON files meant for other tools."""

from __future__ import annotations

import functools
import os

import pytest


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture()
def tiny_demo_data(tmp_path, monkeypatch, small_prior):
    """The tiny splits of tests/test_demo.py (train 100, test 5) in a private data folder; calibration on 8."""
    from hmrcritic.agent import explore as ex

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    monkeypatch.setattr(ex, "explore", functools.partial(ex.explore, calibration_groups=8))


@pytest.mark.slow
def test_run_demo_closes_its_memory_stores(tmp_path, tiny_demo_data):
    """run_demo opened the demo's memory and a frozen copy of it and closed neither: a Python caller running the
    demo again and again kept each run's database files and the snapshot's hold open (about a dozen descriptors a
    run). Measured after a first run, so the caches every first run fills (body model, renderer) are not counted."""
    from hmrcritic.demo import run_demo

    args = {"num_scenes": 1, "num_generations": 2, "explore_rounds": 0, "explore_batch": 1, "say": lambda _: None}
    run_demo(tmp_path / "demo", seed=0, **args)
    before = _open_fds()
    run_demo(tmp_path / "demo", seed=1, **args)  # a leaking run keeps ~17 (its stores' database files, the hold)
    assert _open_fds() - before <= 5, (before, _open_fds())  # margin for a lazily opened log or pipe


def _deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("key", ["explored_on", "explore_progress"])
def test_a_side_record_nested_thousands_deep_is_the_stores_clear_error(tmp_path, key):
    """The memory's own exploration records (explored_on.json, explore_progress.json) nested thousands deep: a
    RecursionError traceback out of `memory export` and out of an import into that memory, where any other
    unreadable record is the store's one-line InputError."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import EXPORTED_FILES, MemoryStore

    src = MemoryStore(tmp_path / "src", seed_starter=False)
    src.export_json(tmp_path / "ok.json")  # an export to import below
    (tmp_path / "src" / EXPORTED_FILES[key]).write_text(_deep_json())
    with pytest.raises(InputError, match="unreadable exploration record"):
        src.export_json(tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()
    if key == "explored_on":  # what an import merges the file's guard into
        with pytest.raises(InputError, match="unreadable exploration record"):
            src.import_json(tmp_path / "ok.json")
    src.close()


@pytest.fixture(scope="module")
def wild_split(tmp_path_factory):
    from hmrcritic.hmr.data import generate_split

    return generate_split("wild", tmp_path_factory.mktemp("splits") / "wild", n=4, quiet=True)


@pytest.mark.parametrize(("flag", "value"), [("has_labels", "false"), ("has_labels", 0), ("has_labels", None),
                                             ("images", "false"), ("images", 1), ("images", [])])
def test_a_manifest_flag_that_is_not_a_boolean_is_a_damaged_split(wild_split, tmp_path, flag, value):
    """``"has_labels": "false"`` read as True (truthiness): wild's labels were looked for in its shards, which hold
    none; ``"images": "false"`` made the split count as rendered. Refused as other damaged manifest fields are,
    with the command that makes the split again (no ``--render`` for a flag that is not true)."""
    import json
    import shutil

    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SceneSet

    folder = tmp_path / "wild"
    shutil.copytree(wild_split, folder)
    m = json.loads((folder / "manifest.json").read_text())
    assert m[flag] is False  # what generate_split wrote for a wild split made without images
    m[flag] = value
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AssetError, match=rf"{flag} is .*not true or false; regenerate the split: hmrcritic data "
                                         r"generate --split wild --n 4$"):
        SceneSet(folder)
