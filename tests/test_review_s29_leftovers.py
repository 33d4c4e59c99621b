"""Session 29 review: two leftovers of earlier reviews — evaluate-critic's progress lines (a line every 10th item,
while export, evaluate and the calibration say theirs at each tenth: two copies of that rule had drifted), and the
commands that read a split without checking its shards against the manifest (evaluate, evaluate-critic, explore,
explore-eval, learning-curve), as train-base, `data info` and export do. Each test failed before its fix."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hmrcritic.cli import main
from hmrcritic.errors import AssetError

pytestmark = pytest.mark.usefixtures("small_prior")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Tiny splits (train 40, test 12, wild 4) generated once, and a second generation of each (another seed, the
    same sizes) whose files replace this one's in the tests: shards that unpack with the rows listed, so nothing
    but the checksum tells them apart."""
    from hmrcritic.hmr.data import generate_split

    root = tmp_path_factory.mktemp("data")
    other = tmp_path_factory.mktemp("other")
    for name, n in (("train", 40), ("test", 12), ("wild", 4)):
        generate_split(name, root / name, n=n, seed=1, quiet=True)
        generate_split(name, other / name, n=n, seed=2, quiet=True)
    return root, other


@pytest.fixture()
def data(splits, tmp_path, monkeypatch):
    """A private copy of the tiny splits (the data folder of this test), the other generation's folder and the
    original."""
    root, other = splits
    shutil.copytree(root, tmp_path / "data")
    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    return tmp_path / "data", other, root


def _replace(data, split: str, file: str = "shard_00000.npz") -> Path:
    """``file`` of ``split`` replaced by the other generation's (a copy gone wrong); its path."""
    root, other, _ = data
    shutil.copyfile(other / split / file, root / split / file)
    return root / split / file


def _error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


# -------------------------------------------------------------------------------------------- progress lines


def test_progress_lines_of_the_commands_follow_the_agents_rule_first_item_included(capsys):
    """One rule for every plain progress line: export and evaluate said no line at their first item (an hour-long
    export's first line came after a tenth of it), the calibration lines of explore did."""
    from hmrcritic.agent.learning_curve import at_a_tenth
    from hmrcritic.commands import progress_at_tenths

    for n in (3, 12, 200):
        show = progress_at_tenths("x {done}/{total}")
        for i in range(1, n + 1):
            show(i, n)
        said = capsys.readouterr().err.splitlines()
        assert said == [f"x {i}/{n}" for i in range(1, n + 1) if at_a_tenth(i, n)], said
        assert said[0] == f"x 1/{n}" and said[-1] == f"x {n}/{n}" and len(said) <= 11
    show = progress_at_tenths("x {done}/{total}")  # told a batch at a time: the first batch, then each tenth
    for done in range(4, 201, 4):
        show(done, 200)
    said = capsys.readouterr().err.splitlines()
    assert said[0] == "x 4/200" and said[-1] == "x 200/200" and len(said) == 11, said


def test_evaluate_critic_says_each_stage_at_its_first_item_and_each_tenth(data, capsys):
    """A line every 10th item: 20 per stage of a 200-group warm-up, and none before the end of a stage under 10
    items (``score full: 1/12`` … came as ``10/12``, ``12/12``)."""
    from hmrcritic.agent.learning_curve import at_a_tenth

    rc = main(["evaluate-critic", "--split", "test", "--num-groups", "12", "-n", "3", "--warmup-groups", "0",
               "--variants", "full", "--source", "perturbed"])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln.strip() for ln in err.splitlines() if ln.startswith("  score full: ")]
    assert lines == [f"score full: {i}/12" for i in range(1, 13) if at_a_tenth(i, 12)], err
    assert lines[0] == "score full: 1/12" and len(lines) == 11


def test_evaluate_critic_json_says_its_progress_on_stderr(data, capsys):
    """``--json`` printed no progress at all (export and evaluate say theirs on stderr with --json): an hour-long
    run in CI showed no sign of life. stdout stays the one JSON document."""
    import json

    rc = main(["evaluate-critic", "--split", "test", "--num-groups", "2", "-n", "3", "--warmup-groups", "0",
               "--variants", "full", "--source", "perturbed", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["num_groups"] == 2
    assert [ln.strip() for ln in err.splitlines() if ln.startswith("  score full: ")] == [
        "score full: 1/2", "score full: 2/2"], err


# ------------------------------------------------------------------------------------------- split checksums


def test_evaluate_refuses_a_replaced_shard_of_the_split_and_of_the_nn_bank(data, capsys):
    """`evaluate` read another generation's shard (same size, same rows) as the split's and reported its figures;
    the nearest-neighbour bank (the train split) the same."""
    shard = _replace(data, "test")
    assert main(["evaluate", "--split", "test", "-n", "2", "--steps", "2", "--no-nn"]) == 2
    err = _error(capsys)
    assert f"split 'test' is damaged: {shard} does not match its manifest" in err, err
    assert "data generate --split test --n 12 --seed 1" in err
    shutil.copyfile(data[2] / "test" / "shard_00000.npz", shard)  # whole again
    train = _replace(data, "train")
    assert main(["evaluate", "--split", "test", "-n", "2", "--steps", "2", "--limit", "2"]) == 2
    assert f"split 'train' is damaged: {train} does not match its manifest" in _error(capsys)


def test_evaluate_checks_wilds_labels_file_which_it_reads(data, capsys):
    """wild's labels are in their own file: evaluate scores against it, so a replaced one is refused too."""
    labels = _replace(data, "wild", "labels_eval.npz")
    assert main(["evaluate", "--split", "wild", "-n", "2", "--steps", "2", "--no-nn"]) == 2
    assert f"{labels} does not match its manifest" in _error(capsys)


def test_evaluate_critic_refuses_a_replaced_shard_of_the_evaluated_split(data, capsys):
    shard = _replace(data, "test")
    assert main(["evaluate-critic", "--split", "test", "--num-groups", "2", "-n", "3", "--warmup-groups", "0",
                 "--variants", "full", "--source", "perturbed"]) == 2
    assert f"{shard} does not match its manifest" in _error(capsys)


def test_explore_refuses_a_replaced_shard_before_exploring(data, tmp_path):
    """`explore` (and evaluate-critic's warm-up, and each learning-curve round) learnt from another generation's
    scenes under this split's ids; checked once per call, not per batch."""
    from hmrcritic.agent.explore import explore, explored_record
    from hmrcritic.memory.store import MemoryStore

    shard = _replace(data, "train")
    with MemoryStore(tmp_path / "mem", chroma_url="") as store:
        with pytest.raises(AssetError, match=re.escape(f"{shard} does not match its manifest")):
            explore(store, split="train", rounds=1, batch_size=1, num_generations=3, source="perturbed",
                    calibration_groups=0, merge_text=False)
        assert explored_record(store)["splits"] == {}  # nothing learnt


def test_explore_eval_and_learning_curve_refuse_a_replaced_held_out_shard(data, tmp_path, capsys):
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.memory.store import MemoryStore

    MemoryStore(tmp_path / "mem", chroma_url="").close()
    shard = _replace(data, "test")
    assert main(["explore-eval", "--split", "test", "--num-groups", "2", "-n", "3", "--variants", "full",
                 "--source", "perturbed", "--memory-dir", str(tmp_path / "mem")]) == 2
    assert f"{shard} does not match its manifest" in _error(capsys)
    from hmrcritic.agent.learning_curve import explore_eval

    with pytest.raises(AssetError, match=re.escape(f"{shard} does not match its manifest")):  # the Python API too
        explore_eval(tmp_path / "mem", split="test", num_groups=2, num_generations=3, source="perturbed",
                     variants=["full"])
    with MemoryStore(tmp_path / "curve", chroma_url="") as store, \
            pytest.raises(AssetError, match=re.escape(f"{shard} does not match its manifest")):
        learning_curve(store, rounds=0, batch_size=1, heldout_groups=2, num_generations=3, source="perturbed")


def test_a_whole_split_reads_as_before(data, tmp_path):
    """The check refuses nothing whole: a split regenerated whole (every file of one generation) explores."""
    from hmrcritic.agent.explore import explore, explored_record
    from hmrcritic.memory.store import MemoryStore

    with MemoryStore(tmp_path / "mem", chroma_url="") as store:
        explore(store, split="train", rounds=1, batch_size=1, num_generations=3, source="perturbed",
                calibration_groups=0, merge_text=False)
        assert explored_record(store)["splits"]["train"]["group_ids"] == ["train-000000"]
