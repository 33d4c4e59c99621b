"""CLI review (s13, docs): defects found walking README.md / DEVELOPERS.md as a new user, with a private home."""

from __future__ import annotations

import pytest

from hmrcritic.cli import main


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A fresh HMRCRITIC_HOME for one test, with no memory, server or device set from outside."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    for name in ("HMRCRITIC_MEMORY", "HMRCRITIC_CHROMA_URL", "HMRCRITIC_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def _one_line_error(err: str) -> str:
    err = err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_memory_calibration_clear_refuses_a_missing_memory_dir(home, tmp_path, capsys):
    """``memory calibration --clear --memory-dir TYPO`` created and seeded a new memory at the typo (exit 0,
    "calibration cleared"), where every other memory command names the missing memory."""
    typo = tmp_path / "no-such-memory"
    rc = main(["memory", "calibration", "--clear", "--memory-dir", str(typo)])
    err = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert str(typo) in err and "no memory" in err
    assert not typo.exists()


def test_explore_eval_refuses_a_folder_out_before_scoring(home, tmp_path, monkeypatch, capsys):
    """``explore-eval --out DIR`` scored every group (minutes) and only then failed, with a message naming a
    temporary file ("Is a directory: /.tmp.x1y2.tmp -> /tmp"); it is refused before anything runs."""
    import hmrcritic.agent.learning_curve as lc

    def boom(*a, **k):
        raise AssertionError("explore_eval ran before --out was checked")

    monkeypatch.setattr(lc, "explore_eval", boom)
    rc = main(["explore-eval", "--out", str(tmp_path), "--num-groups", "1"])
    err = _one_line_error(capsys.readouterr().err)
    assert rc == 2
    assert str(tmp_path) in err and "folder" in err and ".tmp" not in err.replace(str(tmp_path), "")


def test_atomic_write_to_a_folder_names_the_folder_and_leaves_no_temp_file(tmp_path):
    """Writing a file where a folder is raised os.replace's error, naming our temporary file first."""
    from hmrcritic.cli import _os_error
    from hmrcritic.io import atomic_write_json

    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as exc:
        atomic_write_json(target, {"a": 1})
    assert exc.value.filename == str(target) and exc.value.filename2 is None
    assert _os_error(exc.value) == f"Is a directory: {target} (a folder is where a file is needed)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.*.tmp left beside it


@pytest.mark.parametrize("command", [
    ["sample", "--scene", "test:0", "--out", "OUT"],
    ["evaluate", "--limit", "1"],
    ["train-base", "--out", "OUT"],
])
def test_hmrcritic_device_is_the_default_device(home, tmp_path, monkeypatch, capsys, command):
    """config.default_device() (``HMRCRITIC_DEVICE``) was read by nothing: every ``--device`` defaulted to cpu.
    The device is checked before any work, so an unusable one is a one-line error naming it."""
    import hmrcritic.hmr.data as data
    import hmrcritic.hmr.diffusion as diffusion
    import hmrcritic.hmr.train as train

    def no_work(*a, **k):  # before the fix the command went on to train / sample on cpu
        raise AssertionError("work started with HMRCRITIC_DEVICE unread")

    for module, name in ((data, "load_split"), (diffusion, "load_model"), (train, "train_base")):
        monkeypatch.setattr(module, name, no_work)
    monkeypatch.setenv("HMRCRITIC_DEVICE", "cuda:99")
    rc = main([str(tmp_path / "out") if a == "OUT" else a for a in command])
    err = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "'cuda:99'" in err, err


def test_device_flag_overrides_hmrcritic_device_and_empty_means_cpu(home, tmp_path, monkeypatch, capsys):
    from hmrcritic.config import default_device

    monkeypatch.setenv("HMRCRITIC_DEVICE", "cuda:99")
    rc = main(["sample", "--image", str(tmp_path / "none.png"), "--keypoints", str(tmp_path / "none.json"),
               "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and "cuda" not in err and "not found" in err, err
    monkeypatch.setenv("HMRCRITIC_DEVICE", "")
    assert default_device() == "cpu"
    monkeypatch.delenv("HMRCRITIC_DEVICE")
    assert default_device() == "cpu"


def test_learning_curve_refuses_an_unusable_out_before_scoring(home, tmp_path, monkeypatch, capsys):
    """``learning-curve --out`` under a file scored round 0 first and failed only when writing its rows."""
    import hmrcritic.agent.learning_curve as lc

    def boom(*a, **k):
        raise AssertionError("learning_curve ran before --out was checked")

    monkeypatch.setattr(lc, "learning_curve", boom)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["learning-curve", "--memory-dir", str(tmp_path / "m"), "--out", str(blocker / "lc")])
    err = _one_line_error(capsys.readouterr().err)
    assert rc == 2 and str(blocker) in err and "AssertionError" not in err, err


def test_finetune_device_defaults_to_hmrcritic_device(tmp_path, monkeypatch):
    """finetune ignored HMRCRITIC_DEVICE (its --device was "cpu"); an unusable one is refused before training."""
    from typer.testing import CliRunner

    from hmrcritic.cli import app

    monkeypatch.setenv("HMRCRITIC_DEVICE", "tpu")
    res = CliRunner().invoke(app, ["finetune", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "a.pt")])
    assert res.exit_code != 0
    assert "tpu" in str(res.exception) + res.output


def test_memory_import_names_the_bad_record_and_field(tmp_path):
    """A record that does not validate was cut to the first line of pydantic's text: no field, no reason."""
    import json

    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(tmp_path / "mem")
    dump = tmp_path / "dump.json"
    store.export_json(dump)
    data = json.loads(dump.read_text())
    data["rules"][1]["n_used"] = "often"
    dump.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        store.import_json(dump)
    msg = str(err.value)
    assert "rules[1]" in msg and "n_used" in msg and "\n" not in msg


def test_read_jsonl_skips_non_utf8_and_non_object_lines(tmp_path):
    """read_jsonl promised to skip a torn line, but bytes that are not UTF-8 raised UnicodeDecodeError and a
    line such as `5` raised TypeError (finetune's log resume and an export's failures read through it)."""
    from hmrcritic.io import read_jsonl

    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1}\n5\n[1, 2]\n{"step": 2}\n{"st\xff\xfe')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_memory_import_of_an_export_without_hard_keeps_starter_hard_constraints(tmp_path):
    """An export from before conditions carried `hard` (same schema number) read as hard=False: a starter hard
    constraint imported with more uses replaced ours as a soft rule (maintenance could then retire it)."""
    import json

    from hmrcritic.memory.store import MemoryStore

    store = MemoryStore(tmp_path / "mem")
    hard = [r for r in store.rules.all() if r.hard]
    assert hard
    dump = tmp_path / "old.json"
    store.export_json(dump)
    data = json.loads(dump.read_text())
    for r in data["rules"]:
        if r.get("condition"):
            r["condition"].pop("hard", None)
        r["n_used"] = r.get("n_used", 0) + 5  # more uses: the file's copy replaces ours
    dump.write_text(json.dumps(data))
    store.import_json(dump)
    after = {r.rule_id: r for r in store.rules.all()}
    assert all(after[r.rule_id].hard for r in hard)
    assert all(after[r.rule_id].n_used == r.n_used + 5 for r in hard)
