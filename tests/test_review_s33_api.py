"""Review s33 (api): a notebook user who names a memory folder that holds no memory (a typo) hears about it.

``critique_group(..., memory="/some/typo/path")`` made the folder and its parents, seeded the starter rules there and
critiqued with that unexplored memory without a word, where ``hmrcritic critique --memory-dir`` prints a note.
"""

from __future__ import annotations

import warnings

import pytest

from hmrcritic.agent.api import critique_group, critique_groups

pytestmark = pytest.mark.usefixtures("small_prior")

FAST = {"render": False, "max_reflections": 0}


@pytest.fixture()
def group():
    from test_agent_graph import make_group

    s, h, _ = make_group(5, n=3, sample_id="s33-api")
    return s, h


def _new_memory_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "no memory at" in str(w.message)]


def test_a_memory_folder_without_a_memory_is_warned_about(group, tmp_path):
    s, h = group
    typo = tmp_path / "mem0ry" / "nested"
    with pytest.warns(UserWarning, match="no memory at .*mem0ry.*starter rules") as record:
        res = critique_group(s, h, memory=str(typo), config=FAST, group_id="s33-typo", keep=False)
    assert len(_new_memory_warnings(record)) == 1
    assert str(typo) in _new_memory_warnings(record)[0]
    assert record[0].filename == __file__  # points at the caller's line (stacklevel), not into the API
    assert res.scores  # only said: the critique itself runs as before
    # the folder now holds that memory: a second critique with it is not warned about
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        critique_group(s, h, memory=typo, config=FAST, group_id="s33-typo-2", keep=False)
    assert _new_memory_warnings(again) == []


def test_a_config_memory_dir_without_a_memory_is_warned_about(group, tmp_path):
    s, h = group
    with pytest.warns(UserWarning, match="no memory at"):
        critique_group(s, h, config={**FAST, "memory_dir": str(tmp_path / "typo")}, group_id="s33-cfg", keep=False)


def test_critique_groups_passes_the_warning_on(group, tmp_path):
    s, h = group
    with pytest.warns(UserWarning, match="no memory at"):
        out = critique_groups([(s, h)], memory=tmp_path / "typo", config=FAST, keep=False, group_id="s33-many")
    assert out[0].error is None


def test_no_warning_for_an_existing_memory_a_store_or_no_memory(group, tmp_path):
    from hmrcritic.memory.store import MemoryStore

    s, h = group
    store = MemoryStore(path=tmp_path / "made")
    store.reset(seed_starter=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        critique_group(s, h, memory=tmp_path / "made", config=FAST, group_id="s33-a", keep=False)
        critique_group(s, h, memory=store, config=FAST, group_id="s33-b", keep=False)
        critique_group(s, h, memory=tmp_path / "unused", config={**FAST, "use_memory": False}, group_id="s33-c",
                       keep=False)
    assert _new_memory_warnings(record) == []
    assert not (tmp_path / "unused").exists()


# ---- the public functions as a notebook meets them -----------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    ({"memory": ""}, "memory is blank"),
    ({"memory": "  "}, "memory is blank"),
    ({"config": {**FAST, "memory_dir": ""}}, "memory_dir is blank"),
])
def test_a_blank_memory_folder_is_refused_not_made_in_the_working_folder(group, tmp_path, monkeypatch, kwargs, words):
    """``memory=""`` (``os.environ.get("MEM", "")``) is ``Path("")``: the memory was made and seeded in the folder
    the notebook ran from (chroma.sqlite3 and its lock files beside the user's own)."""
    from hmrcritic.errors import InputError

    s, h = group
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=words):
        critique_group(s, h, **{"config": FAST, **kwargs}, group_id="s33-blank", keep=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="memory is blank"):  # refused for the batch at its entry, as a bad type is
        critique_groups([(s, h)], memory="", config=FAST, keep=False)
    assert list(tmp_path.iterdir()) == []


def test_discard_run_and_forget_group_take_what_critique_groups_returns(group, tmp_path):
    """A GroupResult (what a batch returns) was a bare TypeError in both; a failed one has nothing to remove."""
    from pathlib import Path

    from hmrcritic.agent.api import GroupResult, discard_run, forget_group
    from hmrcritic.errors import InputError

    s, h = group
    kept = critique_groups([{"sample": s, "hypotheses": h, "group_id": "s33-kept"}], config={**FAST,
                                                                                           "use_memory": False})
    assert kept[0].error is None and Path(kept[0].result.run_dir).is_dir()
    forget_group(kept[0])
    assert not Path(kept[0].result.run_dir).exists()
    thrown = critique_groups([(s, h)], config={**FAST, "use_memory": False}, keep=False)
    discard_run(thrown[0])
    assert not Path(thrown[0].result.run_dir).exists()
    failed = GroupResult("g", error="bad input", error_type="InputError")
    discard_run(failed)  # nothing to remove, as for None
    discard_run(None)
    with pytest.raises(InputError, match="forget_group: group g has no result"):
        forget_group(failed)
    with pytest.raises(InputError, match="discard_run: result must be a ScoredGroup or a GroupResult, got int"):
        discard_run(5)


def test_write_scores_names_a_wrong_out_dir(group, tmp_path):
    from hmrcritic.agent.api import write_scores
    from hmrcritic.errors import InputError

    s, h = group
    res = critique_group(s, h, config={**FAST, "use_memory": False}, group_id="s33-ws", keep=False)
    with pytest.raises(InputError, match="out_dir must be a folder .*got int"):
        write_scores(res, 5)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        write_scores(res, tmp_path / "a_file")
    assert write_scores(res, tmp_path / "new" / "out").name == "scores.json"
