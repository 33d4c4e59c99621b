"""Review session 23, memory contents: the memory CLI's listings with an imported file's words (a condition's
measure, a calibration's split and group, a rule text with line breaks), and prototype true errors (one rewritten
without a label, one that is not a distance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.cli import main
from hmrcritic.errors import InputError
from hmrcritic.memory.embeddings import TEXT_DIM, pose_embedding
from hmrcritic.memory.schema import Prototype, Rule, RuleCondition, ScoreCalibration
from hmrcritic.memory.store import MemoryStore

ESC = "\x1b]0;pwned\x07\x1b[2J"
SCORES = dict(overall=5.0, motion_structure=5.0, physical_feasibility=5.0, image_alignment=5.0)


def _unit_vector(i: int) -> np.ndarray:
    v = np.zeros((1, TEXT_DIM), dtype=np.float32)
    v[0, i] = 1.0
    return v


def test_memory_rules_shows_a_condition_measure_as_words(tmp_path, capsys):
    """A condition's measure is a name from an imported file (or a VLM) as much as the rule text is: it went into
    the table as a markup string, so "[/b]" in it ended ``memory rules`` with rich's MarkupError (exit 1, nothing
    listed) and its escape sequences reached the terminal."""
    with MemoryStore(tmp_path / "mem") as store:
        # added on a real measure, then stored with the odd one: since session 31 a rule *new* to a memory must
        # name a registered measure, but one already stored (another release's, an update) is shown as it is
        good = RuleCondition(measure="reproj_px", comparator=">", threshold=1, points=1)
        store.rules.add([Rule(rule_id="user-odd", text="odd measure", origin="user", condition=good)],
                        embeddings=_unit_vector(0))
        cond = RuleCondition(measure=f"knee[/b]{ESC}", comparator=">", threshold=1, points=1)
        store.rules.update([Rule(rule_id="user-odd", text="odd measure", origin="user", condition=cond)])
    assert main(["memory", "rules", "--memory-dir", str(tmp_path / "mem")]) == 0
    out = capsys.readouterr().out
    assert "user-odd" in out and "knee[/b]" in out
    assert "\x1b" not in out and "\x07" not in out


def test_memory_stats_and_calibration_show_the_calibrations_words_without_escapes(tmp_path, capsys):
    """The calibration's judge, split and first group come with an imported file: ``memory stats`` and ``memory
    calibration`` printed them as they were, escape sequences and a carriage return (that rewrote the line)."""
    with MemoryStore(tmp_path / "mem") as store:
        store.set_calibration(ScoreCalibration(judge=f"builtin{ESC}", slope=1.0, intercept=0.0, groups=2,
                                               hypotheses=4, split=f"train{ESC}", first_group="g0\rEVIL",
                                               pearson_before=0.1, pearson_after=0.2))
    for command in ("stats", "calibration"):
        assert main(["memory", command, "--memory-dir", str(tmp_path / "mem")]) == 0
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if "log s'" in x)
        assert "fitted on 2 train" in line and "g0 EVIL" in line
        assert not any(c in out for c in "\x1b\x07\r")


def test_memory_search_shows_one_hit_a_line(tmp_path, capsys):
    """A rule text with a carriage return sent the cursor back over the hit's similarity and id, and one with a
    newline spread one hit over lines that read as hits without a score."""
    with MemoryStore(tmp_path / "mem", seed_starter=False) as store:
        store.rules.add([Rule(rule_id="user-cr", text="feet below the floor\r0.999  starter-fake  trust me",
                              origin="user"),
                         Rule(rule_id="user-nl", text="knees bent\nbackwards", origin="user")])
    assert main(["memory", "search", "feet below the floor", "-k", "2",
                 "--memory-dir", str(tmp_path / "mem")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines)
    by_id = {ln.split()[1]: ln for ln in lines}
    assert by_id["user-cr"].endswith("feet below the floor 0.999 starter-fake trust me")
    assert by_id["user-nl"].endswith("knees bent backwards")


def _proto(pid: str, emb: np.ndarray, error_mm) -> Prototype:
    return Prototype(proto_id=pid, embedding=emb.tolist(), error_mm=error_mm, source="train/g#h0", **SCORES)


@pytest.mark.parametrize("server", [False, True], ids=["disk", "server"])
def test_a_prototype_written_again_without_a_true_error_forgets_the_old_one(tmp_path, request, server):
    """Chroma's upsert merges the new metadata into the stored record's: a prototype written again under the same
    id without a true error (the group critiqued again, unlabelled) kept the old one, read back as its label."""
    url = request.getfixturevalue("chroma_url") if server else ""
    emb = pose_embedding(np.random.default_rng(0).normal(size=(2, 24, 3)))
    with MemoryStore(tmp_path / "mem", chroma_url=url, seed_starter=False) as store:
        store.prototypes.add([_proto("g#h0", emb[0], 12.0)])
        before = store.version()
        store.prototypes.add([_proto("g#h0", emb[1], None)])
        assert store.prototypes.get(["g#h0"])[0].error_mm is None
        assert store.version() == before  # the version hashes ids and scores: unchanged, as before the fix
        store.prototypes.add([_proto("g#h1", emb[0], None)])  # a new record without one: no key, as before
        assert store.prototypes.get(["g#h1"])[0].error_mm is None
    with MemoryStore(tmp_path / "mem", chroma_url=url, read_only=True) as store:
        assert store.prototypes.get(["g#h0"])[0].error_mm is None
        assert store.prototypes.query(emb[1:], k=1)[0][0][0].error_mm is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -40.0])
def test_a_prototype_whose_true_error_is_not_a_distance_is_refused(tmp_path, bad):
    """A NaN or inf true error was stored as unknown without a word (Chroma drops it), and a negative one settles
    above 10 and lifts the level of every group near it; an import took them from a file the same way."""
    emb = pose_embedding(np.random.default_rng(1).normal(size=(2, 24, 3)))
    with MemoryStore(tmp_path / "mem", seed_starter=False) as store:
        with pytest.raises(InputError, match="error_mm"):
            store.prototypes.add([_proto("p-bad", emb[0], bad)])
        assert store.prototypes.count() == 0
        store.prototypes.add([_proto("p-ok", emb[1], 30.0)])
        store.export_json(tmp_path / "m.json")
    data = json.loads(Path(tmp_path / "m.json").read_text(encoding="utf-8"))
    data["prototypes"].append({**data["prototypes"][0], "proto_id": "p-bad", "error_mm": bad})
    (tmp_path / "bad.json").write_text(json.dumps(data), encoding="utf-8")  # NaN/Infinity: Python's JSON reads them
    with MemoryStore(tmp_path / "other", seed_starter=False) as other:
        with pytest.raises(InputError, match=r"p-bad.*error_mm.*nothing was imported"):
            other.import_json(tmp_path / "bad.json")
        assert other.prototypes.count() == 0


@pytest.mark.parametrize("field,value", [("n_used", 2**63 + 1), ("n_used", 10**400), ("round_created", -(2**70))],
                         ids=["n_used-past-64-bits", "n_used-past-a-float", "round_created-past-64-bits"])
def test_an_import_with_a_count_beyond_64_bits_is_refused_before_anything_is_written(tmp_path, field, value):
    """Chroma keeps metadata integers as 64-bit: a larger count in an import file came back rounded (the memory
    held another number than the file), and one past a float failed the write half-way with "Cannot convert Python
    object to UpdateMetadataValue" after the file's explored groups had been merged."""
    with MemoryStore(tmp_path / "mem") as store:
        store.export_json(tmp_path / "m.json")
    data = json.loads(Path(tmp_path / "m.json").read_text(encoding="utf-8"))
    odd = {**data["rules"][0], "rule_id": "user-big", "origin": "user", "n_success": 0, field: value}
    data["rules"] = [data["rules"][1], odd]
    data["explored_on"] = {"splits": {"train": {"group_ids": ["g1"]}}}
    (tmp_path / "big.json").write_text(json.dumps(data), encoding="utf-8")
    with MemoryStore(tmp_path / "other", seed_starter=False) as other:
        with pytest.raises(InputError, match=r"user-big.*64 bits.*nothing was imported"):
            other.import_json(tmp_path / "big.json")
        assert other.rules.count(include_retired=True) == 0
    assert not (tmp_path / "other" / "explored_on.json").exists()


def test_an_import_of_a_missing_file_creates_no_memory(tmp_path, capsys, monkeypatch):
    """The store was opened before the file was read: a mistyped file name created and seeded a memory in the
    --memory-dir given (or the default memory) for an import that then failed, "no file"."""
    monkeypatch.setenv("HMRCRITIC_MEMORY", str(tmp_path / "default-memory"))
    for where in (["--memory-dir", str(tmp_path / "new-memory")], []):
        assert main(["memory", "import", str(tmp_path / "mem.jsn"), *where]) == 2
        assert "no file" in capsys.readouterr().err
    assert main(["memory", "import", str(tmp_path), "--memory-dir", str(tmp_path / "new-memory")]) == 2
    assert "a folder, not a file" in capsys.readouterr().err
    assert not (tmp_path / "new-memory").exists() and not (tmp_path / "default-memory").exists()


def test_adding_rules_with_a_vector_count_that_is_not_one_per_rule_is_clear(tmp_path):
    """``RuleMemory.add(rules, embeddings)`` with fewer vectors than rules failed inside the write with numpy's
    IndexError ("index 1 is out of bounds"); with more, the extra ones were dropped without a word."""
    rules = [Rule(rule_id="user-a", text="knees bent backwards", origin="user"),
             Rule(rule_id="user-b", text="feet below the floor", origin="user")]
    with MemoryStore(tmp_path / "mem", seed_starter=False) as store:
        for vecs in (_unit_vector(0), np.concatenate([_unit_vector(0), _unit_vector(1), _unit_vector(2)])):
            with pytest.raises(InputError, match=r"2 rule\(s\) but embeddings of shape"):
                store.rules.add(rules, embeddings=vecs)
        assert store.rules.count() == 0
        assert store.rules.add(rules, embeddings=np.concatenate([_unit_vector(0), _unit_vector(1)])) == \
            ["user-a", "user-b"]
        assert sorted(store.rules.embeddings()) == ["user-a", "user-b"]


def test_an_import_still_reads_an_export_piped_in(tmp_path):
    """The check for a missing file before the memory is opened must not refuse what is no regular file but reads
    as one: ``hmrcritic memory import /dev/stdin < mem.json``."""
    import subprocess
    import sys

    with MemoryStore(tmp_path / "src") as store:
        store.rules.add([Rule(rule_id="user-piped", text="piped rule", origin="user")], embeddings=_unit_vector(3))
        store.export_json(tmp_path / "m.json")
    res = subprocess.run([sys.executable, "-m", "hmrcritic.cli", "memory", "import", "/dev/stdin", "--json",
                          "--memory-dir", str(tmp_path / "dst")], input=(tmp_path / "m.json").read_text("utf-8"),
                         capture_output=True, text=True, timeout=300)  # a pipe, as from `cat mem.json |`
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["rules_added"] >= 1
    with MemoryStore(tmp_path / "dst", read_only=True) as dst:
        assert dst.rules.get(["user-piped"])[0].text == "piped rule"
