"""Review s27 (exploration and learning-curve leftovers: the files they read back, what they print).

* a pending batch plan that no longer parsed was deleted as "torn before it was complete", though it is written
  whole: damaged later, its batch maybe half applied, and nothing left to say so (not UTF-8, a folder in its place
  or JSON nested thousands deep came out as a bare traceback); a plan of the right keys holding records of the wrong
  type was applied half-way or wrote a bad round into the progress record;
* the learning-curve's per-round line (it prints no other table) did not say when ρ was undefined for some groups,
  counted as 0 in its mean;
* explore-eval's ``--out`` naming a pipe, and learning-curve's ``--out`` holding a folder where the curve writes one
  of its files, failed only at the final write, after all the work;
* a partial curve file of rows with a gap or without their figures was resumed, and failed the progress line or
  the plot as a bare traceback.

Real groups (perturbed ground truth of tiny generated splits), the real agent graph, a real Chroma memory on disk.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import test_review_s22_curve as s22  # noqa: E402
from test_review_s26_evals import _same_hypotheses  # noqa: E402

from hmrcritic.agent import explore as ex  # noqa: E402
from hmrcritic.errors import InputError  # noqa: E402
from hmrcritic.memory.store import MemoryStore  # noqa: E402

pytestmark = pytest.mark.usefixtures("small_prior")  # tiny splits: no 20k-scene train split for the pose prior

data, _groups = s22.data, s22._groups  # tiny train (6) and test (4) splits of other seeds, perturbed groups of them


def _explored(path: Path, train) -> dict:
    kw = dict(split="train", groups=train, rounds=1, batch_size=2, calibration_groups=0, merge_text=False)
    ex.explore(MemoryStore(path), **kw)
    return kw


# ---- 1. a pending plan that does not parse, or holds records of the wrong type -------------------------------------
@pytest.mark.parametrize("damage", [b'{"batch_key": "abc:r0", "sig": "ab', b"\xff\xfe{}", b"[" * 100_000])
def test_a_damaged_pending_plan_is_refused_not_deleted(data, damage):
    """The plan is written whole (atomic_write_json), so one that does not parse was damaged after it was written
    and its batch may have been half applied. It was deleted and the exploration went on (not UTF-8 or nested
    thousands deep: a bare UnicodeDecodeError or RecursionError traceback). It is refused as one of the wrong shape
    is, the file kept."""
    path = data / "m"
    kw = _explored(path, _groups("train", 2, 3))
    pending = path / ex.PENDING_FILE
    pending.write_bytes(damage)
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch .*reset --yes"):
        ex.explore(MemoryStore(path), **{**kw, "rounds": 2})
    assert pending.read_bytes() == damage


def test_a_pending_plan_in_a_folder_is_one_clear_error(data):
    path = data / "m"
    kw = _explored(path, _groups("train", 2, 3))
    (path / ex.PENDING_FILE).mkdir()
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch"):
        ex.explore(MemoryStore(path), **kw)
    assert (path / ex.PENDING_FILE).is_dir()


@pytest.mark.parametrize("bad", [{"r": "0"}, {"new_rules": [{"no": "rule"}]}, {"span": [0, "2"]}])
def test_a_pending_plan_with_records_of_the_wrong_type_is_refused_before_anything_is_written(data, bad):
    """A plan with its four keys but a round of "0" was applied: the round went into the progress record, which
    every later exploration then refused; a rule record of the wrong shape failed as a bare pydantic traceback. It is
    refused before anything of it is written (the progress record and the log as they were)."""
    path = data / "m"
    kw = _explored(path, _groups("train", 2, 3))
    plan = {"batch_key": "feedbeef00:r7", "sig": "feedbeef00", "r": 7, "round": 9, "rule_deltas": {},
            "new_rules": [], "prototypes": [], "report": {"round": 9, "batch_key": "feedbeef00:r7"}, **bad}
    (path / ex.PENDING_FILE).write_text(json.dumps(plan), encoding="utf-8")
    progress, log = (path / ex.PROGRESS_FILE).read_bytes(), (path / ex.LOG_FILE).read_bytes()
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch \(not a batch"):
        ex.explore(MemoryStore(path), **kw)
    assert (path / ex.PROGRESS_FILE).read_bytes() == progress and (path / ex.LOG_FILE).read_bytes() == log
    assert (path / ex.PENDING_FILE).exists()


def test_a_resumed_curve_refuses_a_damaged_pending_plan(data):
    """learning-curve finishes a pending plan before it resumes (``_resume_rows``): a damaged one was deleted there
    too and the curve went on from a memory that may be half-updated."""
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    train, held = _groups("train", 4), _groups("test", 2)
    mem, out = data / "mem", data / "out"
    with pytest.raises(KeyboardInterrupt):
        s22._curve(mem, out, train, held, 1, status=s22._stop_at("round 1: scoring"))
    (mem / ex.PENDING_FILE).write_text('{"batch_key": "ab', encoding="utf-8")
    with pytest.raises(InputError, match=r"explore_pending\.json: unreadable pending exploration batch"):
        s22._curve(mem, out, train, held, 1)
    assert (mem / ex.PENDING_FILE).exists() and (out / PARTIAL_FILE).exists()


# ---- 2. the per-round line says when ρ was undefined ---------------------------------------------------------------
def test_the_curve_line_says_when_rho_was_undefined_for_some_groups(data):
    """A held-out group with one true error for every hypothesis has an undefined ρ, counted as 0 in the round's
    mean: explore-eval's table says so, the learning-curve line (its only table) printed the mean alone."""
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.commands.explore import curve_line

    ranked, flat = _groups("test", 2)
    rows: list[dict] = []
    with MemoryStore(data / "mem", chroma_url="") as store:
        learning_curve(store, rounds=0, heldout=[ranked, _same_hypotheses(flat)], progress=rows.append)
    (row,) = rows
    assert row["rho_undefined"] == 1
    assert "ρ undefined for 1 of 2 scored groups, counted as 0 in ρ and τ" in curve_line(row)
    rows.clear()
    with MemoryStore(data / "mem2", chroma_url="") as store:
        learning_curve(store, rounds=0, heldout=[ranked], progress=rows.append)
    assert rows[0]["rho_undefined"] == 0 and "undefined" not in curve_line(rows[0])


# ---- 3. an --out that cannot be written is refused before the work ------------------------------------------------
def test_explore_eval_refuses_a_pipe_as_out_before_scoring(data):
    """``explore-eval --out`` naming a FIFO was refused by the final write, after every variant was scored (here the
    memory does not even exist: the memory's error came first). It is refused first, naming the option."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    fifo = data / "pipe"
    os.mkfifo(fifo)
    res = CliRunner().invoke(app, ["explore-eval", "--memory-dir", str(data / "no-memory"), "--split", "test",
                                   "--num-groups", "1", "-n", "3", "--source", "perturbed", "--out", str(fifo)])
    assert res.exit_code != 0
    assert "explore-eval --out" in str(res.exception) and "not a regular file" in str(res.exception)
    assert not (data / "no-memory").exists()


@pytest.mark.parametrize("name", ["learning_curve.png", "learning_curve.json"])
def test_learning_curve_refuses_an_out_it_cannot_write_before_round_0(data, name):
    """A folder where the curve writes its result (or PNG) failed only at the end, after every round was explored
    and scored (the PNG's after the result was written, the partial file left behind). Refused before round 0."""
    from hmrcritic.agent.learning_curve import CURVE_FILE, PARTIAL_FILE

    out = data / "out"
    (out / name).mkdir(parents=True)
    with pytest.raises(InputError, match=rf"--out {out} holds a folder named {name}"):
        s22._curve(data / "mem", out, _groups("train", 2), _groups("test", 1), 0)
    assert sorted(p.name for p in out.iterdir()) == [name]
    assert not (out / PARTIAL_FILE).exists() and not (out / CURVE_FILE).is_file()


def test_learning_curve_api_refuses_an_out_dir_that_is_a_file(data):
    """``learning_curve(out_dir=<a file>)`` scored round 0 and then failed writing its partial file."""
    out = data / "afile"
    out.write_text("x")
    with pytest.raises(InputError, match="afile is a file, so no folder can be made inside it"):
        s22._curve(data / "mem", out / "sub", _groups("train", 2), _groups("test", 1), 0)


# ---- 4. a partial curve file of rows that cannot be resumed ---------------------------------------------------------
@pytest.mark.parametrize("edit", ["gap", "no_figure"])
def test_a_partial_curve_of_broken_rows_is_not_resumed(data, edit):
    """Rows with a gap in their rounds, or without a figure the line and plot read, were resumed: the progress line
    failed as a bare KeyError (or the plot, after every later round). They are refused as unreadable."""
    from hmrcritic.agent.learning_curve import PARTIAL_FILE

    train, held = _groups("train", 4), _groups("test", 2)
    mem, out = data / "mem", data / "out"
    with pytest.raises(KeyboardInterrupt):
        s22._curve(mem, out, train, held, 2, status=s22._stop_at("round 2: scoring"))
    part = json.loads((out / PARTIAL_FILE).read_text(encoding="utf-8"))
    if edit == "gap":
        part["rows"] = [part["rows"][1]]
    else:
        del part["rows"][0]["spearman"]
    (out / PARTIAL_FILE).write_text(json.dumps(part), encoding="utf-8")
    with pytest.raises(InputError, match=r"cannot continue the interrupted curve: .*is unreadable"):
        s22._curve(mem, out, train, held, 2)


# ---- 5. the explore round line of a round that scored no group ------------------------------------------------------
def test_the_round_line_of_a_round_of_only_unrankable_groups_prints_no_nan(data):
    """A round whose groups all have one true error for every hypothesis is recorded (skipped, nothing to rank) with
    no mean ρ: `hmrcritic explore` printed "mean ρ +nan", as if measured. It prints "—" as the other tables do."""
    from hmrcritic.commands.explore import explore_line

    lines: list[str] = []
    flat = [_same_hypotheses(g) for g in _groups("train", 2, 3)]
    ex.explore(MemoryStore(data / "m"), split="train", groups=flat, rounds=1, batch_size=2, calibration_groups=0,
               merge_text=False, progress=lambda e, p: lines.append(explore_line(e, p) or ""))
    (line,) = [x for x in lines if x.startswith("round ")]
    assert "nan" not in line and "mean ρ      —," in line, line
