"""Review s34, fifth re-read (of 200b16a..54b61f1): bugs found in those commits' changes, each shown by a test that
failed on the code as it was (written as strict xfails, un-marked once fixed in the same session).

Nothing here trains or installs a model: ``train_base``, ``ship_model`` and the evaluation are stand-ins (as in
test_review_s34_reread4), and the package's assets folder is replaced by a temporary one."""

from __future__ import annotations

import json
import shutil

import pytest
from test_review_s34_modelwalk import stand_in_train_base, temporary_assets

from hmrcritic.cli import main


@pytest.fixture()
def fake_run(monkeypatch, tmp_path):
    """``train-base`` with training, loading, evaluation and installing replaced by stand-ins over a temporary
    assets folder holding the package's (original) model pair; ``seen["model"]`` is the bytes the next training
    writes (another run's model), the stand-in ship writes model.pt's bytes and a .json naming them."""
    seen: dict = {"model": b"weights of run X"}
    assets = temporary_assets(tmp_path)

    def fake_train(cfg, out, **kw):
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "model.pt").exists():
            (out / "model.pt").write_bytes(seen["model"])
        (out / "state.pt").write_bytes(b"state")
        return out / "model.pt"

    def fake_ship(path, evals, dest_dir=None, command=None):
        data = path.read_bytes()
        (assets / "base_model.pt").write_bytes(data)
        (assets / "base_model.json").write_text(json.dumps({"eval": f"figures of {data.decode()}"}))
        return assets / "base_model.pt", assets / "base_model.json"

    stand_in_train_base(monkeypatch, assets, fake_train, fake_ship)
    return seen


SHIP = ["train-base", "--steps", "2", "--ship", "--eval-limit", "2"]


def test_a_backup_cut_short_by_a_full_disk_is_not_kept_as_the_original(fake_run, tmp_path, monkeypatch, capsys):
    """The backup is written straight to replaced_base_model.pt. A full disk (or Ctrl-C) in that copy leaves a
    truncated file under the backup's name and the command fails before anything is shipped; the same command run
    again (space freed) finds the file, keeps it ("stays kept") and ships over the package's model: the original
    was left nowhere but in a truncated copy — the loss 54b61f1's keep-the-first-backup rule was to prevent."""
    out = tmp_path / "run"
    real_copy2 = shutil.copy2

    def copy_cut_short(src, dst, *a, **kw):
        if "replaced_base_model.pt" in str(dst):  # the backup, under whatever name it is written
            with open(src, "rb") as f, open(dst, "wb") as g:
                g.write(f.read()[:5])  # part of the file written, then the disk is full
            raise OSError(28, "No space left on device")
        return real_copy2(src, dst, *a, **kw)

    monkeypatch.setattr(shutil, "copy2", copy_cut_short)
    assert main([*SHIP, "--out", str(out)]) != 0
    assert (tmp_path / "assets" / "base_model.pt").read_bytes() == b"the shipped weights"  # nothing shipped yet
    monkeypatch.setattr(shutil, "copy2", real_copy2)
    assert main([*SHIP, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "replaced_base_model.pt").read_bytes() == b"the shipped weights"


def test_a_kept_backup_without_its_json_is_not_paired_with_another_models_json(fake_run, tmp_path, monkeypatch,
                                                                               capsys):
    """Run X's ship stopped after its backup .pt and before the .json copy; run Y is then shipped; X shipped
    again keeps its replaced_base_model.pt (the original weights) and copies the assets' base_model.json beside it
    — by then Y's. The pair in X's folder is the original's weights with Y's figures and sha256: put back with
    ``cp`` as README says, base_model.json describes a model that is not there."""
    x, y = tmp_path / "x", tmp_path / "y"
    real_copy2 = shutil.copy2

    def json_copy_fails(src, dst, *a, **kw):
        if "replaced_base_model.json" in str(dst):
            raise OSError(28, "No space left on device")  # (or Ctrl-C between the two copies)
        return real_copy2(src, dst, *a, **kw)

    monkeypatch.setattr(shutil, "copy2", json_copy_fails)
    assert main([*SHIP, "--out", str(x)]) != 0
    monkeypatch.setattr(shutil, "copy2", real_copy2)
    fake_run["model"] = b"weights of run Y"
    assert main([*SHIP, "--out", str(y)]) == 0
    assert main([*SHIP, "--out", str(x)]) == 0
    capsys.readouterr()
    assert (x / "replaced_base_model.pt").read_bytes() == b"the shipped weights"
    kept_json = x / "replaced_base_model.json"
    assert not kept_json.exists() or json.loads(kept_json.read_text()) == {"eval": "the shipped figures"}


def test_two_runs_shipped_alternately_keep_the_original_somewhere(fake_run, tmp_path, capsys):
    """Checked fine: X, Y, X, Y shipped in turn; the original pair stays in X's folder (and Y's keeps X's)."""
    x, y = tmp_path / "x", tmp_path / "y"
    for out, model in ((x, b"weights of run X"), (y, b"weights of run Y"), (x, None), (y, None)):
        if model is not None:
            fake_run["model"] = model
        assert main([*SHIP, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (x / "replaced_base_model.pt").read_bytes() == b"the shipped weights"
    assert json.loads((x / "replaced_base_model.json").read_text()) == {"eval": "the shipped figures"}
    assert (y / "replaced_base_model.pt").read_bytes() == b"weights of run X"


@pytest.mark.parametrize("env", [
    {"OPENAI_API_KEY": "sk-test123"},
    {"HMRCRITIC_API_KEY": " ", "OPENAI_API_KEY": "sk-test123"},
    {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
    {"OPENAI_API_BASE": "http://127.0.0.1:9/v1"},
    {"HMRCRITIC_BASE_URL": " ", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
])
def test_the_early_vlm_check_accepts_what_the_vlm_judge_accepts(env, monkeypatch):
    """Checked fine: _check_vlm_endpoint passes every setup VLMJudge takes (a key or a URL in any of the variables
    config reads, a blank variable being unset)."""
    from hmrcritic.commands.agent import _check_vlm_endpoint
    from hmrcritic.config import API_KEY_VARS, BASE_URL_VARS

    for var in (*API_KEY_VARS, *BASE_URL_VARS):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _check_vlm_endpoint()


def test_a_finished_critique_does_not_call_its_old_memory_version_the_current_one():
    """A critique --learn returned again ("finished earlier") carries the memory version of its first run (the
    thread's stored value; the version is no part of the settings digest, so the memory may have grown since). The
    note printed under its table said "(now version <that old one>)"."""
    from hmrcritic.agent.api import ScoredGroup
    from hmrcritic.agent.report import memory_written_note

    result = ScoredGroup(group_id="g", scores=[], ranking=[], memory_version="v-then", finished_earlier=True,
                         memory_written={"prototypes": 4, "rules_recorded": 0})
    assert "now version" not in memory_written_note(result)
