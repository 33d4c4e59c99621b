"""``hmrcritic doctor``: reports every part, exits non-zero on a failed check, never prints the API key."""

from __future__ import annotations

import json

import pytest

from hmrcritic import config
from hmrcritic.cli import main
from hmrcritic.commands import doctor

SECRET = "sk-test-DO-NOT-PRINT-7f3a9c"


@pytest.fixture()
def good_checkpoint(tmp_path, monkeypatch):
    """A small but real checkpoint, so the success path does not depend on the shipped asset."""
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    path = tmp_path / "base_model.pt"
    save_model(HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2)), path, extra={})
    monkeypatch.setattr(doctor, "CHECKPOINT_PATH", path)
    return path


def _run(capsys, *args):
    code = main(["doctor", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_doctor_json_reports_all_parts_and_passes(capsys, monkeypatch, good_checkpoint):
    code, text = _run(capsys, "--json")
    report = json.loads(text)
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {
        "python",
        "torch",
        "packages",
        "gl_render",
        "body_model",
        "folders",
        "checkpoint",
        "judge",
    }
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    assert code == 0
    assert checks["torch"]["build"] in ("CPU",) or checks["torch"]["build"].startswith("CUDA")
    gl = checks["gl_render"]
    assert gl["platform"] == report["gl_platform"] and gl["pixels"] > 100 and gl["renderer"]
    assert checks["body_model"]["model"] == "mannequin" and checks["body_model"]["vertices"] > 100
    assert checks["folders"]["folders"]["data"]["path"] == str(config.data_dir())
    assert checks["checkpoint"]["path"] == str(good_checkpoint) and checks["checkpoint"]["parameters"] > 0
    assert checks["judge"]["settings"]["api_key"] == "not set"


def test_doctor_never_prints_the_key(capsys, monkeypatch, good_checkpoint):
    monkeypatch.setenv("HMRCRITIC_API_KEY", SECRET)
    monkeypatch.setenv("HMRCRITIC_BASE_URL", f"http://user:{SECRET}@127.0.0.1:8000/v1")
    for args in (("--no-render",), ("--json", "--no-render")):
        code, text = _run(capsys, *args)
        assert SECRET not in text
        assert code != 0 and "must not carry credentials" in text  # the VLM judge would refuse this URL
    report = json.loads(text)
    judge = next(c for c in report["checks"] if c["name"] == "judge")
    assert judge["settings"]["api_key"] == "set" and judge["ok"] is False
    assert judge["settings"]["base_url"] == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:8000/v1")
    code, text = _run(capsys, "--no-render")
    assert SECRET not in text and "api key set" in text


def test_doctor_fails_on_missing_or_corrupt_checkpoint(capsys, monkeypatch, tmp_path):
    missing = tmp_path / "nope" / "base_model.pt"
    monkeypatch.setattr(doctor, "CHECKPOINT_PATH", missing)
    code, text = _run(capsys, "--no-render")
    assert code != 0
    assert "[FAIL] checkpoint" in text and str(missing) in text
    corrupt = tmp_path / "base_model.pt"
    corrupt.write_bytes(b"not a torch file")
    monkeypatch.setattr(doctor, "CHECKPOINT_PATH", corrupt)
    code, text = _run(capsys, "--json", "--no-render")
    report = json.loads(text)
    ck = next(c for c in report["checks"] if c["name"] == "checkpoint")
    assert code != 0 and not report["ok"] and not ck["ok"] and str(corrupt) in ck["error"]


def test_doctor_fails_when_the_checkpoint_metadata_describes_another_file(capsys, good_checkpoint):
    """ship_model writes base_model.pt and base_model.json one after the other: a crash between leaves a pair
    whose sha256 disagree, and the shipped figures would then describe another model."""
    meta = good_checkpoint.with_suffix(".json")
    meta.write_text(json.dumps({"sha256": "0" * 64}))
    code, text = _run(capsys, "--no-render")
    assert code != 0 and "[FAIL] checkpoint" in text and "sha256 differs" in text


def test_doctor_fails_on_a_broken_body_model(capsys, monkeypatch, tmp_path, good_checkpoint):
    bad = tmp_path / "SMPL_BROKEN.pkl"
    bad.write_bytes(b"garbage")
    monkeypatch.setenv("HMRCRITIC_BODY_MODEL", str(bad))
    code, text = _run(capsys, "--json", "--no-render")
    report = json.loads(text)
    body = next(c for c in report["checks"] if c["name"] == "body_model")
    assert code != 0 and not body["ok"] and "\n" not in body["error"]
