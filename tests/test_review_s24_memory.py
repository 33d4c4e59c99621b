"""Review s24: memory folders and imports, doctor, and the evaluations' resource handling.

A schemeless server address given as the memory folder, doctor naming one bad agent variable a run, a second
import reporting its prototypes as imported again, a learning curve leaving the store it opened open, a group's
unexpected error ending a whole evaluation, and a calibration naming a failed group as its first."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.cli import main
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


def test_a_schemeless_server_address_as_the_memory_folder_is_refused_without_its_password(tmp_path, monkeypatch,
                                                                                          capsys):
    """``HMRCRITIC_MEMORY=bob:pw@host:8000`` (the form Chroma and Ray take) made a folder named by it, password and
    all; as ``http://…`` already was, it is refused with the hint to HMRCRITIC_CHROMA_URL, the password masked.
    Folders that only look a little like one (``a:b``, ``./host:8000``, an absolute path) stay folders."""
    from hmrcritic import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMRCRITIC_MEMORY", "bob:FAKEs24PW@127.0.0.1:8000")
    assert main(["memory", "stats"]) != 0
    err = capsys.readouterr().err
    assert "is a server address, not a folder" in err and "HMRCRITIC_CHROMA_URL" in err
    assert "FAKEs24PW" not in err
    assert list(tmp_path.iterdir()) == []
    for address in ("localhost:8000", "[::1]:8000", "bob@10.0.0.1:80"):
        monkeypatch.setenv("HMRCRITIC_MEMORY", address)
        with pytest.raises(InputError, match="server address"):
            config.memory_dir()
    for folder in ("a:b", "./host:8000", str(tmp_path / "host:8000"), "mem"):
        monkeypatch.setenv("HMRCRITIC_MEMORY", folder)
        assert config.memory_dir() == Path(folder)


def test_doctor_names_every_bad_agent_variable(monkeypatch):
    """Three bad agent variables were fixed in three doctor runs: AgentConfig() stops at the first word where a
    number or yes/no goes, and that hid the others (a range, an unknown judge) too."""
    from hmrcritic.commands.doctor import _judge

    monkeypatch.setenv("HMRCRITIC_RULES_K", "abc")
    monkeypatch.setenv("HMRCRITIC_LEARN", "maybe")
    monkeypatch.setenv("HMRCRITIC_PROTO_WEIGHT", "3")
    monkeypatch.setenv("HMRCRITIC_JUDGE", "vlmm")
    res = _judge()
    assert res["ok"] is False
    for var in ("HMRCRITIC_RULES_K='abc'", "HMRCRITIC_LEARN='maybe'", "HMRCRITIC_PROTO_WEIGHT='3'",
                "HMRCRITIC_JUDGE='vlmm'"):
        assert var in res["error"], (var, res["error"])
    # one bad variable: said as before
    for var in ("HMRCRITIC_RULES_K", "HMRCRITIC_LEARN", "HMRCRITIC_PROTO_WEIGHT"):
        monkeypatch.delenv(var)
    assert _judge()["error"] == "HMRCRITIC_JUDGE='vlmm' is unknown; choose builtin or vlm"


def _protos(n: int, tag: str):
    from hmrcritic.memory.embeddings import POSE_DIM
    from hmrcritic.memory.schema import Prototype

    rng = np.random.default_rng(0)
    return [Prototype(proto_id=f"{tag}-{i}", embedding=rng.normal(size=POSE_DIM).tolist(), overall=5.0,
                      motion_structure=5.0, physical_feasibility=5.0, image_alignment=5.0) for i in range(n)]


def test_a_second_import_says_its_prototypes_were_there_already(tmp_path, capsys):
    """Prototypes are upserted by id: a second import of one file said "prototypes: 3" again, as if the memory had
    gained three. The counts now tell the new from the ones already present (replaced by the file's copy)."""
    from hmrcritic.memory.store import MemoryStore

    src = MemoryStore(tmp_path / "src", chroma_url="")
    src.prototypes.add(_protos(3, "p"))
    src.export_json(tmp_path / "mem.json")
    src.close()
    dst = MemoryStore(tmp_path / "dst", chroma_url="")
    dst.prototypes.add(_protos(1, "p"))  # one of the file's ids is here before any import
    first = dst.import_json(tmp_path / "mem.json")
    assert (first["prototypes"], first["prototypes_added"], first["prototypes_replaced"]) == (3, 2, 1)
    second = dst.import_json(tmp_path / "mem.json")
    assert (second["prototypes"], second["prototypes_added"], second["prototypes_replaced"]) == (3, 0, 3)
    assert dst.prototypes.count() == 3
    dst.close()
    # the command says it as the store counts it
    assert main(["memory", "import", str(tmp_path / "mem.json"), "--memory-dir", str(tmp_path / "dst")]) == 0
    out = capsys.readouterr().out
    assert "prototypes_added: 0" in out and "prototypes_replaced: 3" in out


def test_learning_curve_closes_the_store_it_opened(tmp_path):
    """Given a folder, learning_curve() opened a store and left it (its claim on the folder's Chroma system, and so
    the database file) to the garbage collector: a refused call kept it as long as its traceback was held (a
    notebook's last exception). Checked on the store's claim: the file itself is let go when Chroma's objects are
    freed, which can wait for the collector whoever closes."""
    from hmrcritic.agent.explore import PROGRESS_FILE
    from hmrcritic.agent.learning_curve import learning_curve
    from hmrcritic.memory.store import MemoryStore
    from tests.test_review_s24_followups import _claims_on

    folder = tmp_path / "mem"
    MemoryStore(folder, chroma_url="").close()
    (folder / PROGRESS_FILE).write_text("{}", encoding="utf-8")  # explored already: refused after opening
    assert _claims_on(folder) == 0
    with pytest.raises(InputError, match="explored already") as caught:
        learning_curve(folder, heldout=[object()])
    assert caught.value is not None  # the traceback (and every frame's locals) still held here
    assert _claims_on(folder) == 0
    # a store the caller passed in stays the caller's, open
    store = MemoryStore(folder, chroma_url="")
    store.stats()
    with pytest.raises(InputError, match="explored already"):
        learning_curve(store, heldout=[object()])
    assert store.stats()["rules"] > 0 and _claims_on(folder) == 1
    store.close()


@pytest.fixture(scope="module")
def labelled_groups(tmp_path_factory):
    from hmrcritic.agent.groups import groups_from_perturbed_gt
    from hmrcritic.hmr.data import SceneSet, generate_split

    root = tmp_path_factory.mktemp("s24groups")
    return groups_from_perturbed_gt(SceneSet(generate_split("train", root / "train", n=4, quiet=True)),
                                    num_groups=4, num_generations=8, seed=0)


def test_a_failed_group_is_recorded_without_the_key_its_error_quoted(tmp_path, monkeypatch, labelled_groups):
    """score_groups kept a failed group's message as the judge said it: a custom judge's (make_judge takes one)
    error quoting the key went into the row's first_failure, which evaluate-critic writes as it is into its
    result.json (and --json prints). The other groups score as they did."""
    from hmrcritic.agent.judges import BuiltinJudge
    from hmrcritic.agent.learning_curve import score_groups
    from hmrcritic.memory.store import MemoryStore

    key = "sk-FAKEs24key0123456789abcd"
    monkeypatch.setenv("HMRCRITIC_API_KEY", key)

    class FlakyJudge(BuiltinJudge):
        calls = 0

        def critique(self, ctx):
            FlakyJudge.calls += 1
            if FlakyJudge.calls == 1:
                raise RuntimeError(f"upstream said: bad request with key {key}")
            return super().critique(ctx)

    mem = MemoryStore(tmp_path / "mem", chroma_url="")
    failed: list[str] = []
    scores, versions = score_groups(labelled_groups[:2], mem, "full", judge=FlakyJudge(), failures=failed)
    plain, _ = score_groups(labelled_groups[1:2], mem, "full", judge=BuiltinJudge())
    mem.close()
    assert scores[0] is None and versions[0] == ""
    np.testing.assert_array_equal(scores[1], plain[0])
    assert len(failed) == 1 and failed[0].startswith(f"{labelled_groups[0].group_id}: ")
    assert "upstream said" in failed[0] and key not in failed[0] and "FAKEs24key" not in failed[0]


def test_a_calibration_names_the_first_group_it_was_fitted_on(tmp_path, labelled_groups):
    """calibrate_memory named groups[0] as the calibration's first group even when its critique failed (the fit
    skips it): ``memory stats`` then said the calibration came from a group it never saw."""
    from hmrcritic.agent.calibration import calibrate_memory
    from hmrcritic.memory.store import MemoryStore

    bad = copy.copy(labelled_groups[0])
    bad.hypotheses = {k: np.asarray(v).astype(object) for k, v in bad.hypotheses.items()}  # refused: not numbers
    mem = MemoryStore(tmp_path / "mem", chroma_url="")
    cal = calibrate_memory(mem, [bad, *labelled_groups[1:4]], split="train")
    mem.close()
    assert cal.groups == 3
    assert cal.first_group == labelled_groups[1].group_id


def test_evaluate_critic_closes_its_exploration_memory_when_the_exploration_fails(tmp_path, monkeypatch,
                                                                                  memory_held_elsewhere):
    """evaluate_critic opened its exploration memory and let go of it with ``del``: an exploration that failed
    (here: another evaluation is exploring it) left the store, and its Chroma database file, open for as long as
    the exception's traceback was held."""
    from hmrcritic.agent.evaluate_critic import evaluate_critic
    from hmrcritic.memory.store import MemoryStore
    from tests.test_review_s24_followups import _claims_on

    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.003")
    work = tmp_path / "work"
    MemoryStore(work / "memory", chroma_url="").close()
    with memory_held_elsewhere(work / "memory"), pytest.raises(InputError, match="another evaluation") as caught:
        evaluate_critic(num_groups=1, num_generations=4, warmup_groups=2, batch_size=2, workdir=work,
                        variants=["full"])
    assert caught.value is not None  # the traceback (and every frame's locals) still held here
    assert _claims_on(work / "memory") == 0  # the store's claim (the file waits for Chroma's objects to be freed)
