"""Review s18 (perf): three changes that make the export and throwaway critiques faster without changing what
they write. The export with the builtin judge no longer draws overlay/side grids that nothing reads (its dataset
is byte for byte the one rendering wrote); ``repoint_last`` lists the traces with one scandir (the same list the
glob gave); a throwaway critique's held trace records are scrubbed when written, not when held (the same trace
on error, nothing otherwise)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment import export as E

pytestmark = pytest.mark.usefixtures("small_prior")


def _ctx(judge: str = "builtin", scorer: str = E.DEFAULT_SCORER) -> E.WorkerContext:
    return E.WorkerContext(None, 4, 2, judge, scorer, False, None, None, 1)


def test_only_the_builtin_judge_through_the_default_scorer_is_told_not_to_render(monkeypatch):
    assert E.GroupWorker(_ctx())._agent_config()["render"] is False
    # the VLM reads the grids; a scorer of the user's own may read them too: both keep HMRCRITIC_RENDER (resolved
    # once by the export since session 29, and recorded in its header)
    for flag, want in (("0", False), ("1", True)):
        monkeypatch.setenv("HMRCRITIC_RENDER", flag)
        assert E.GroupWorker(_ctx())._agent_config()["render"] is False
        assert E.GroupWorker(_ctx(judge="vlm"))._agent_config()["render"] is want
        assert E.GroupWorker(_ctx(scorer="test_export:fake_score"))._agent_config()["render"] is want


def _dataset(root) -> tuple[list[dict], dict[str, bytes]]:
    """The manifest's records and every group file's arrays as bytes (what finetuning reads)."""
    records = [json.loads(line) for line in (root / D.MANIFEST).read_text().splitlines() if line.strip()]
    arrays = {}
    for f in sorted(root.rglob("*.npz")):
        with np.load(f) as z:
            arrays[str(f.relative_to(root))] = b"".join(z[k].tobytes() for k in sorted(z.files))
    return records, arrays


@pytest.mark.parametrize("source", ["inline", "images_and_masks"])
def test_export_with_the_builtin_judge_writes_the_dataset_rendering_did(model_path, tmp_path, monkeypatch,  # noqa: F811
                                                                        source):
    kw = {"score_group": E.DEFAULT_SCORER, "judge": "builtin", "use_memory": True, "memory": str(tmp_path / "memory")}
    inputs = None
    if source == "inline":
        inputs = make_inputs(2, seed=3)
    else:  # photos and person masks: the mask measures render silhouettes whatever the render setting
        from hmrcritic.hmr.data import SceneSet, generate_split

        data = generate_split("wild", tmp_path / "wild", n=2, render_images=True, quiet=True)
        assert all(s.image_path and s.mask_path for s in SceneSet(data))
        kw.update(split=None, data=str(data))
    drawn = []
    from hmrcritic.hmr import render as R

    real = R.Renderer.group_grids
    monkeypatch.setattr(R.Renderer, "group_grids", lambda self, *a, **k: drawn.append(1) or real(self, *a, **k))
    monkeypatch.delenv("HMRCRITIC_RENDER", raising=False)  # its default: on
    new = E.export(cfg_for(tmp_path / "new", model_path, **kw), inputs=inputs)
    assert {r["memory_version"] for r in _dataset(tmp_path / "new")[0]} - {"", "none"}
    assert not drawn

    old_config = E.GroupWorker._agent_config

    def rendering(self):  # the settings before the change: HMRCRITIC_RENDER's default, on
        out = old_config(self)
        out.pop("render", None)
        return out

    monkeypatch.setenv("HMRCRITIC_RENDER", "1")
    monkeypatch.setattr(E.GroupWorker, "_agent_config", rendering)
    old = E.export(cfg_for(tmp_path / "old", model_path, **kw), inputs=inputs)

    assert drawn, "the reference export did not render: it would not show what rendering changed"
    assert (new.new_groups, new.failures) == (old.new_groups, old.failures) == (2, 0)
    assert _dataset(tmp_path / "new") == _dataset(tmp_path / "old")


# ------------------------------------------------------------------ trace.repoint_last: one scandir, not a glob
def _globbed(d) -> list[tuple[float, str]]:
    """What repoint_last listed before: ``glob("*.jsonl")`` with ``is_file()`` and ``stat()`` per match."""
    return [(p.stat().st_mtime, p.stem) for p in d.glob("*.jsonl") if p.is_file()]


def test_traces_left_lists_what_the_glob_listed(tmp_path):
    from hmrcritic.agent.trace import _traces_left

    d = tmp_path / "traces"
    d.mkdir()
    for name in ("20260101-a.jsonl", "b.c.jsonl", ".hidden.jsonl", "LAST", "x.json", "y.JSONL", "z.jsonl.tmp"):
        (d / name).write_text("{}\n")
    (d / "folder.jsonl").mkdir()  # a folder named like a trace: not a trace
    (d / "link.jsonl").symlink_to(d / "b.c.jsonl")  # a link to a trace: listed, with the trace's time
    (d / "dangling.jsonl").symlink_to(d / "gone.jsonl")  # a dangling link: not listed
    os.utime(d / "b.c.jsonl", (5, 5))
    got = _traces_left(d)
    assert sorted(got) == sorted(_globbed(d))
    assert {name for _, name in got} == {"20260101-a", "b.c", ".hidden", "link"}


def test_repoint_last_points_at_the_newest_trace_left(tmp_path):
    from hmrcritic.agent.trace import repoint_last

    d = tmp_path / "traces"
    d.mkdir()
    for i, name in enumerate(("old", "newest", "middle")):
        (d / f"{name}.jsonl").write_text("{}\n")
        os.utime(d / f"{name}.jsonl", (100 + i, {"old": 100, "newest": 300, "middle": 200}[name]))
    (d / "LAST").write_text("forgotten\n")  # the run whose trace an export just deleted
    repoint_last(d)
    assert (d / "LAST").read_text() == "newest\n"
    (d / "LAST").write_text("middle\n")  # a pointer at a trace that is there is left alone
    repoint_last(d)
    assert (d / "LAST").read_text() == "middle\n"
    for p in d.glob("*.jsonl"):
        p.unlink()
    (d / "LAST").write_text("middle\n")
    repoint_last(d)
    assert not (d / "LAST").exists()


# --------------------------------------------- trace: a throwaway critique's held records are scrubbed when written
def _events(path) -> list[dict]:
    from hmrcritic.io import read_jsonl

    skip = {"run_id", "time", "checksum"}
    return [{k: v for k, v in r.items() if k not in skip} for r in read_jsonl(path)]


def test_a_held_trace_written_on_error_is_the_trace_written_as_it_happened(tmp_path, monkeypatch):
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-perf-review-secret-1234")
    cfg = AgentConfig(judge="builtin", render=False, chroma_url="http://user:pw-secret-99@chroma.example:8000")
    written = []
    for run_id, held in (("live", False), ("held", True)):
        update = {"tags": ["occluded", "key sk-perf-review-secret-1234 quoted"],
                  "memory_written": {"note": "Bearer abcdef0123456789"}}
        tw = TraceWriter(run_id, "g", only_on_error=held)
        tw.start(cfg)
        tw.node("render", update, 0.25)
        update["tags"].append("added after the node was traced")  # a later change to the update: not traced
        update["memory_written"]["note"] = "changed"
        tw.error(RuntimeError("endpoint said sk-perf-review-secret-1234"))
        written.append(tw.path)
    live, held = (_events(p) for p in written)
    assert held == live and [r["event"] for r in held] == ["start", "node", "error"]
    text = written[1].read_text()
    assert "sk-perf-review-secret-1234" not in text and "pw-secret-99" not in text and "abcdef0123456789" not in text
    assert "added after" not in text and held[1]["changed"]["tags"][0] == "occluded"


def test_a_held_trace_of_a_run_that_succeeds_writes_nothing(tmp_path, monkeypatch):
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.agent.trace import TraceWriter, traces_dir

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    tw = TraceWriter("ok", "g", only_on_error=True)
    tw.start(AgentConfig(judge="builtin", render=False))
    tw.node("render", {"tags": ["a"]}, 0.1)
    tw.finish({"round": 0, "done": True})
    assert not tw.path.exists() and not (traces_dir() / "LAST").exists()
