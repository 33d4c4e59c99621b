"""Session 37, the lead's own changes. Each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest


def test_sampling_groups_reports_each_batch_and_draws_the_same_groups():
    """``groups_from_model`` said nothing while it sampled (tens of seconds for an evaluation's or reproduce's
    groups on a CPU). ``progress(done, total)`` after each batch; the groups are those drawn without it."""
    from hmrcritic.agent.groups import groups_from_model

    calls: list[tuple[int, int]] = []
    kw = {"num_groups": 3, "num_generations": 2, "seed": 5, "steps": 2, "batch": 2}
    with_progress = groups_from_model("test", progress=lambda i, n: calls.append((i, n)), **kw)
    assert calls == [(2, 3), (3, 3)]
    plain = groups_from_model("test", **kw)
    assert [g.group_id for g in with_progress] == [g.group_id for g in plain]
    for a, b in zip(with_progress, plain, strict=True):
        assert a.hypotheses.keys() == b.hypotheses.keys()
        for k in a.hypotheses:
            np.testing.assert_array_equal(a.hypotheses[k], b.hypotheses[k])


def test_perturbed_groups_report_once():
    from hmrcritic.agent.groups import make_groups

    calls: list[tuple[int, int]] = []
    got, used = make_groups("test", num_groups=4, num_generations=2, source="perturbed",
                            progress=lambda i, n: calls.append((i, n)))
    assert used == "perturbed" and len(got) == 4 and calls == [(4, 4)]


def test_evaluate_critic_reports_its_sampling_as_it_goes(monkeypatch):
    """evaluate-critic called ``progress("groups", n, n)`` only once every held-out group was drawn: a minute or more
    of silence with the model. The sampling's own progress is passed through, under the same stage name."""
    import hmrcritic.agent.evaluate_critic as ec

    seen: list[tuple] = []

    class Stop(Exception):
        pass

    def make_groups(split, num_groups, num_generations, seed=0, source="auto", progress=None):
        assert progress is not None, "evaluate_critic sampled without passing its progress on"
        progress(8, num_groups)
        progress(num_groups, num_groups)
        raise Stop

    import hmrcritic.agent.groups as gr

    monkeypatch.setattr(gr, "make_groups", make_groups)  # imported inside evaluate_critic
    monkeypatch.setattr(gr, "verify_split", lambda *a, **k: None)
    with pytest.raises(Stop):
        ec.evaluate_critic(split="test", num_groups=20, num_generations=2,
                           progress=lambda stage, i, n: seen.append((stage, i, n)))
    assert seen == [("groups", 8, 20), ("groups", 20, 20)]


def test_reproduce_logs_the_explore_stage_sampling_at_tenths():
    """Batches of 8 rarely land on ``_every``'s steps (every 5th of 56): the stage's sampling is logged through
    ``_tenths`` — the first batch, each tenth passed, the end — and the same figure twice is not logged again."""
    from hmrcritic.alignment import reproduce as rp

    lines: list[str] = []
    show = rp._tenths(lines.append, "explore: sampling train groups")
    for done in [*range(8, 56, 8), 56, 56]:
        show(done, 56)
    assert lines == [f"explore: sampling train groups: {d}/56" for d in (8, 16, 24, 32, 40, 48, 56)]
    lines.clear()
    show = rp._tenths(lines.append, "x")
    for done in range(1, 101):
        show(done, 100)
    assert len(lines) == 11 and lines[0] == "x: 1/100" and lines[-1] == "x: 100/100"


def test_reproduce_explore_stage_passes_a_sampling_progress(tmp_path, monkeypatch):
    import hmrcritic.agent.explore as ex
    import hmrcritic.agent.groups as gr
    import hmrcritic.hmr.diffusion as hd
    from hmrcritic.alignment import reproduce as rp

    def groups_from_model(*a, progress=None, **k):
        assert progress is not None, "reproduce sampled its explore groups without a progress"
        progress(8, 35)
        progress(35, 35)
        return []

    monkeypatch.setattr(ex, "explore", lambda memory, **k: {"rounds": 1})
    monkeypatch.setattr(gr, "groups_from_model", groups_from_model)
    monkeypatch.setattr(hd, "load_model", lambda *a, **k: None)
    lines: list[str] = []
    rp._explore(rp.make_preset("quick"), tmp_path / "memory", None, "k", rp._Log(tmp_path, lines.append))
    said = [line.split("] ", 1)[1] for line in lines]  # after the time stamp
    assert said == ["explore: sampling train groups: 8/35", "explore: sampling train groups: 35/35"]


@pytest.mark.parametrize("field", ["data", "out", "model"])
def test_finetune_config_names_its_python_fields(tmp_path, field):
    """``FinetuneConfig(data="")`` was refused as ``--data is empty``: a flag the Python caller never wrote (the CLI
    refuses its own empty or unknown-home paths before the config is made). Named as ExportConfig names its own."""
    from hmrcritic.alignment.finetune import FinetuneConfig
    from hmrcritic.errors import InputError

    given = {"data": str(tmp_path / "d"), "out": str(tmp_path / "o.pt"), field: ""}
    with pytest.raises(InputError, match=rf"^FinetuneConfig\.{field} is empty"):
        FinetuneConfig(**given)


def test_reproduce_names_its_model_argument(tmp_path):
    from hmrcritic.alignment.reproduce import reproduce
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match=r"^model is empty") as err:
        reproduce("quick", out_dir=tmp_path / "run", model=" ", progress=False)
    assert "--model" not in str(err.value)


def _api(name):
    import importlib

    module, attr = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize(("entry", "kwargs", "hint"), [
    ("hmrcritic.alignment.export.ExportConfig", {"out": "x", "num_generation": 8}, "num_generations"),
    ("hmrcritic.alignment.finetune.FinetuneConfig", {"data": "d", "out": "o", "learning_rate": 1e-4}, None),
    ("hmrcritic.alignment.finetune.FinetuneConfig", {"data": "d", "out": "o", "batchsize": 4}, "batch_size"),
    ("hmrcritic.hmr.evaluate.evaluate_model", {"model": None, "limt": 2}, "limit"),
    ("hmrcritic.hmr.data.load_split", {"name": "test", "genrate": False}, "generate"),
    ("hmrcritic.hmr.data.generate_split", {"name": "test", "outdir": "x"}, "out_dir"),
    ("hmrcritic.hmr.data.sample_from_user", {"image_path": "a.png", "keypoints_path": "k.json", "focl": 5.0}, "focal"),
    ("hmrcritic.hmr.diffusion.sample", {"model": None, "cond": None, "num_generation": 4}, "num_generations"),
    ("hmrcritic.hmr.diffusion.condition_from_keypoints", {"keypoints": None, "K": None, "imagesize": (2, 2)},
     "image_size"),
    ("hmrcritic.hmr.diffusion.load_model", {"devcie": "cpu"}, "device"),
    ("hmrcritic.hmr.body.load_body_model", {"pth": None}, "path"),
    ("hmrcritic.memory.MemoryStore", {"pth": "x"}, "path"),
])
def test_a_misspelt_keyword_of_the_python_api_is_one_line_with_the_closest_name(tmp_path, monkeypatch, entry,
                                                                                  kwargs, hint):
    """The API walk fixed critique_group & co.; the rest of README's Python API (configs, loaders, sampling,
    memory) still answered a misspelt keyword with Python's bare TypeError naming no keyword that exists. Checked
    before anything runs: nothing is written."""
    from hmrcritic.errors import InputError

    monkeypatch.chdir(tmp_path)
    name = entry.rsplit(".", 1)[1]
    wrong = next(k for k in kwargs if k not in ("out", "data", "model", "name", "image_path", "keypoints_path",
                                                "cond", "keypoints", "K"))
    with pytest.raises(InputError) as err:
        _api(entry)(**kwargs)
    text = str(err.value)
    assert text.startswith(f"{name}: unknown argument(s) {wrong!r}") and "\n" not in text
    assert (f"(did you mean {hint!r}?)" in text) if hint else "did you mean" not in text
    assert "self" not in text.split(" takes ", 1)[1]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_argument_of_a_config_is_one_line():
    from hmrcritic.alignment.finetune import FinetuneConfig
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match=r"^FinetuneConfig: missing a required argument: 'out' \(FinetuneConfig "
                                         r"takes data, out, model"):
        FinetuneConfig(data="d")


def test_a_checked_entry_keeps_its_signature_and_runs_as_before():
    import inspect

    from hmrcritic.alignment.export import ExportConfig
    from hmrcritic.hmr.diffusion import sample

    assert list(inspect.signature(ExportConfig).parameters)[:2] == ["out", "split"]
    assert list(inspect.signature(sample).parameters)[:3] == ["model", "cond", "num_generations"]
    assert sample.__name__ == "sample" and "hypotheses" in (sample.__doc__ or "").lower()
    cfg = ExportConfig("out", split="wild", num_generations=8)  # positional and keyword, as before
    assert cfg.split == "wild" and cfg.num_generations == 8


def test_samples_and_groups_print_as_one_line():
    """``split[0]`` printed 79 lines of arrays and a HypothesisGroup of 64 16,000 characters at the end of a
    notebook cell; one line each now, saying what a user looks for."""
    import torch

    from hmrcritic.hmr.data import load_split
    from hmrcritic.hmr.diffusion import condition_from_keypoints, load_model, sample

    s = load_split("test", quiet=True)[0]
    text = repr(s)
    visible = int((np.asarray(s.keypoints)[:, 2] > 0).sum())
    assert "\n" not in text and len(text) < 300
    assert text.startswith(f"Sample(sample_id={s.sample_id!r}, {visible}/17 keypoints visible, image_size=")
    assert text.endswith("labelled)") and "unlabelled" not in text  # the test split has labels
    kp = torch.as_tensor(s.keypoints)[None]
    K = torch.as_tensor(s.K)[None]
    g = sample(load_model(), condition_from_keypoints(kp, K, torch.as_tensor([s.image_size])), num_generations=3,
               steps=2, generator=torch.Generator().manual_seed(0))
    assert repr(g).startswith("HypothesisGroup(B=1, N=3, device='cpu', dtype='float32'") and "\n" not in repr(g)


def test_a_split_takes_slices_and_refuses_other_indices_in_one_line():
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.data import load_split

    split = load_split("test", quiet=True)
    first = split[:3]
    assert [s.sample_id for s in first] == [split[i].sample_id for i in range(3)]
    assert [s.sample_id for s in split[-2:]] == [split[len(split) - 2].sample_id, split[len(split) - 1].sample_id]
    assert split[np.int64(1)].sample_id == split[1].sample_id
    for bad in ("a", 1.0, True, None):
        with pytest.raises(InputError, match=r"^split test: index must be an integer"):
            split[bad]
    with pytest.raises(IndexError):  # iteration's end is still an IndexError
        split[len(split)]


def test_rule_search_refuses_a_k_or_query_of_the_wrong_type(tmp_path):
    from hmrcritic.errors import InputError
    from hmrcritic.memory import MemoryStore

    store = MemoryStore(tmp_path / "m")
    with pytest.raises(InputError, match="^k must be an integer, got str"):
        store.rules.search("knee", k="3")
    with pytest.raises(InputError, match="query_text must be text, got int"):
        store.rules.search(5)
    assert len(store.rules.search("knee bent backwards", k=2)) == 2


def test_memory_import_merges_a_guard_written_while_it_waited_for_the_lock(tmp_path, monkeypatch):
    """``import_json`` read the memory's explored record before taking the write lock and merged into that copy: an
    exploration of another process that wrote the guard in between (the import waiting on its lock) lost its groups
    from explored_on.json — the guard that keeps evaluations off explored groups. Read again under the lock."""
    import contextlib
    import json

    from hmrcritic.memory import MemoryStore
    from hmrcritic.memory import store as store_mod

    name = store_mod.EXPORTED_FILES["explored_on"]
    src = MemoryStore(tmp_path / "src", chroma_url="", seed_starter=False)
    (tmp_path / "src" / name).write_text(json.dumps({"splits": {"train": {"group_ids": ["a"]}}}))
    f = tmp_path / "e.json"
    src.export_json(f)
    src.close()
    dst = MemoryStore(tmp_path / "dst", chroma_url="", seed_starter=False)
    (tmp_path / "dst" / name).write_text(json.dumps({"splits": {"train": {"group_ids": ["x"]}}}))
    real_write = dst._write
    done = []

    @contextlib.contextmanager
    def write_after_another_process():
        if not done:  # the other process's exploration commits while this import waits for the lock
            done.append(1)
            (tmp_path / "dst" / name).write_text(json.dumps({"splits": {"train": {"group_ids": ["x", "y"]}}}))
        with real_write():
            yield

    monkeypatch.setattr(dst, "_write", write_after_another_process)
    try:
        assert dst.import_json(f)["explored_groups"] == 1  # "a" is what the import added
    finally:
        dst.close()
    guard = json.loads((tmp_path / "dst" / name).read_text())
    assert guard["splits"]["train"]["group_ids"] == ["x", "y", "a"]


def test_a_scored_group_built_without_validation_still_prints_and_meta_keypoints_are_one_line():
    """The one-line repr read fields a ``model_construct`` record may lack (an AttributeError where pydantic's own
    repr printed), and a keypoint tensor on the meta device was a bare NotImplementedError from ``.cpu()``."""
    import torch

    from hmrcritic.agent.api import ScoredGroup, _sample_arrays
    from hmrcritic.errors import InputError

    assert "group_id='g'" in repr(ScoredGroup.model_construct(group_id="g"))
    s = type("S", (), {"sample_id": "m", "keypoints": torch.zeros(17, 3, device="meta"), "K": np.eye(3),
                       "image_size": (4, 4)})()
    with pytest.raises(InputError, match="^sample m: keypoints"):
        _sample_arrays(s)
