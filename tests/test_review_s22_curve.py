"""Review s22 (learning-curve / explore-eval / evaluate-critic orchestration: resume and honesty): a resumed curve
asked for fewer rounds than its memory holds, and the held-out checks reading the record of the frozen copy that
scores rather than the live folder's."""

from __future__ import annotations

import pytest

from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior


@pytest.fixture()
def data(monkeypatch, tmp_path):
    """A data folder of tiny train and test splits of other seeds."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    generate_split("train", n=6, seed=1, quiet=True)
    generate_split("test", n=4, seed=2, quiet=True)
    return tmp_path


def _groups(split: str, n: int, g: int = 3):
    from hmrcritic.agent.groups import make_groups

    return make_groups(split, num_groups=n, num_generations=g, source="perturbed")[0]


def _stop_at(where: str):
    """A status callback that raises KeyboardInterrupt (Ctrl-C) at the first line starting with ``where``."""

    def status(line: str) -> None:
        if line.startswith(where):
            raise KeyboardInterrupt

    return status


def _curve(mem, out, train, held, rounds, status=None):
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.memory.store import MemoryStore

    return learning_curve(MemoryStore(mem), rounds=rounds, batch_size=2, train_groups=train, heldout=held,
                          out_dir=out, explore_kwargs={"merge_text": False, "calibration_groups": 0},
                          status=status)


def test_a_resumed_curve_with_fewer_rounds_than_its_memory_holds_is_refused(data):
    """A curve interrupted after exploring round 2 and resumed with --rounds 1 returned (and wrote as finished)
    its rows 0–1 while the memory in --memory-dir held two rounds (rows for a --rounds 0 resume: more rows than
    asked): neither matched one uninterrupted call. It is refused, the partial curve kept, and a resume with
    enough rounds finishes it."""
    from hmrcritic.agent.learning_curve import CURVE_FILE, PARTIAL_FILE

    train, held = _groups("train", 4), _groups("test", 2)
    mem, out = data / "mem", data / "out"
    with pytest.raises(KeyboardInterrupt):
        _curve(mem, out, train, held, 2, status=_stop_at("round 2: scoring"))
    with pytest.raises(InputError, match=r"reached round 2 .* more than --rounds 1; give --rounds 2 or more"):
        _curve(mem, out, train, held, 1)
    assert (out / PARTIAL_FILE).exists() and not (out / CURVE_FILE).exists()
    res = _curve(mem, out, train, held, 2)
    assert [r["round"] for r in res["rows"]] == [0, 1, 2]


def _flip_frozen(monkeypatch, path, ids):
    """``frozen_copy`` that copies the memory while its record says it explored ``ids`` of test, and takes that
    back from the live folder after: the live record and the one of the copy that scores differ (a reset or an
    exploration landing between the copy and the checks)."""
    import json

    from hmrcritic.agent import explore as ex

    real = ex.frozen_copy

    def frozen(memory=None, root=None):
        f = path / ex.EXPLORED_FILE
        before = f.read_text() if f.exists() else None
        ex._add_explored(path, "test", ids, {})
        try:
            return real(memory, root)
        finally:
            if before is None:
                f.unlink()
            else:
                f.write_text(before)
            assert "test" not in json.loads(before or '{"splits": {}}')["splits"]

    monkeypatch.setattr(ex, "frozen_copy", frozen)


def test_explore_eval_checks_the_record_of_the_copy_it_scores(data, monkeypatch):
    """explore_eval scored from its frozen copy but checked the live folder's explored-scene record, read after
    the copy: a memory explored on the held-out groups when copied and reset (or changed) before the check
    passed, and its scores leaked."""
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.memory.store import MemoryStore

    mem = data / "mem"
    MemoryStore(mem)
    held = _groups("test", 2)
    _flip_frozen(monkeypatch, mem, [held[0].group_id])
    monkeypatch.setattr(lc, "score_groups", lambda *a, **k: pytest.fail("scored a group the copy learned from"))
    with pytest.raises(InputError, match=rf"explored .*\(e\.g\. {held[0].group_id}\)"):
        lc.explore_eval(mem, held, variants=["full"])


def test_learning_curve_checks_the_record_of_the_copy_it_scores(data, monkeypatch):
    """Each round of learning_curve checked the live record and then took the copy it scored with: what changed
    in between (another process exploring the held-out groups into this memory) was scored unchecked."""
    from hmrcritic.agent import learning_curve as lc
    from hmrcritic.memory.store import MemoryStore

    mem = data / "mem"
    MemoryStore(mem)
    held = _groups("test", 2)
    _flip_frozen(monkeypatch, mem, [held[1].group_id])
    monkeypatch.setattr(lc, "score_groups", lambda *a, **k: pytest.fail("scored a group the copy learned from"))
    with pytest.raises(InputError, match=rf"explored .*\(e\.g\. {held[1].group_id}\)"):
        lc.learning_curve(MemoryStore(mem), rounds=0, heldout=held, train_groups=_groups("train", 2))


def _no_work(monkeypatch):
    """Sampling or scoring a group fails the test: what is refused must be refused before either."""
    from hmrcritic.agent import groups as gr
    from hmrcritic.agent import learning_curve as lc

    def boom(*a, **k):
        raise AssertionError("the work started before the settings were checked")

    monkeypatch.setattr(gr, "make_groups", boom)
    monkeypatch.setattr(lc, "score_groups", boom)


@pytest.mark.parametrize("judge", ["foo", "vlm"])
def test_explore_eval_refuses_a_judge_it_cannot_make_before_scoring(judge, data, monkeypatch):
    """``explore-eval --judge foo`` (or ``vlm`` with no endpoint) failed every critique of every variant and ended
    "every critique failed (with --judge vlm: check the endpoint…)" — never the reason. It is said first."""
    from hmrcritic.agent.learning_curve import explore_eval
    from hmrcritic.memory.store import MemoryStore

    for var in ("HMRCRITIC_API_KEY", "OPENAI_API_KEY", "HMRCRITIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    MemoryStore(data / "mem")
    _no_work(monkeypatch)
    with pytest.raises(InputError, match="unknown|no endpoint"):
        explore_eval(data / "mem", split="test", num_groups=2, num_generations=3, judge=judge)


@pytest.mark.parametrize("kw, what", [({"judge": "foo"}, "unknown"), ({"max_reflections": -1}, "max_reflections"),
                                      ({"tau": 2.0}, "tau")])
def test_evaluate_critic_refuses_bad_settings_before_sampling(kw, what, data, monkeypatch):
    """evaluate-critic sampled every held-out group (minutes with the model) before a bad --max-reflections or
    tau was said, and with an unknown judge (or a VLM one without an endpoint) and no exploration it scored every
    variant to nothing without the reason."""
    from pydantic import ValidationError

    from hmrcritic.agent.evaluate_critic import evaluate_critic

    _no_work(monkeypatch)
    with pytest.raises((InputError, ValidationError), match=what):
        evaluate_critic(num_groups=2, num_generations=3, warmup_groups=0, workdir=data / "ev", **kw)
    assert not (data / "ev").exists()


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"heldout_groups": 0}, {"num_generations": 1}, {"judge": "foo"},
                                {"heldout": []}])
def test_learning_curve_api_refuses_bad_settings_before_round_0(kw, data, monkeypatch):
    """The CLI refuses these flags; the Python API scored round 0 first (batch_size 0, an unknown judge: refused
    when round 1 began) or explored every round to a curve of NaN (no held-out groups) or of groups of one
    hypothesis, which rank nothing."""
    from hmrcritic.agent import learning_curve as lc

    if "heldout" not in kw:
        _no_work(monkeypatch)
    else:
        monkeypatch.setattr(lc, "score_groups", lambda *a, **k: pytest.fail("scored no groups"))
    with pytest.raises(InputError):
        lc.learning_curve(data / "mem", rounds=1, out_dir=data / "out", **kw)
    assert not (data / "mem").exists()


def test_learning_curve_cli_refuses_negative_rounds_before_making_out(tmp_path, capsys):
    """``--rounds -1`` was refused by learning_curve, after --out had been made: an empty folder left behind."""
    from hmrcritic.cli import main

    out = tmp_path / "curve"
    rc = main(["learning-curve", "--rounds", "-1", "--memory-dir", str(tmp_path / "m"), "--out", str(out)])
    assert rc == 2 and "--rounds must be ≥ 0" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "m").exists()
