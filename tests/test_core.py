"""Shared plumbing: rotations, atomic IO, settings, CLI error handling."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from hmrcritic import config
from hmrcritic.hmr import rotations as R
from hmrcritic.io import append_jsonl, atomic_save_npz, atomic_write_json, read_jsonl, record_checksum


def _random_aa(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    angle = torch.rand(n, 1, generator=g) * (math.pi - 1e-3)
    return axis * angle


def test_axis_angle_matrix_round_trip():
    aa = _random_aa(256)
    back = R.matrix_to_axis_angle(R.axis_angle_to_matrix(aa))
    assert torch.allclose(back, aa, atol=1e-4)


def test_zero_rotation_and_near_pi():
    assert torch.allclose(R.axis_angle_to_matrix(torch.zeros(2, 3)), torch.eye(3).expand(2, 3, 3), atol=1e-6)
    aa = torch.tensor([[math.pi - 1e-4, 0.0, 0.0]])
    m = R.axis_angle_to_matrix(aa)
    assert torch.allclose(R.axis_angle_to_matrix(R.matrix_to_axis_angle(m)), m, atol=1e-4)


def test_rot6d_round_trip_and_projection_to_so3():
    m = R.axis_angle_to_matrix(_random_aa(64, 1))
    assert torch.allclose(R.rot6d_to_matrix(R.matrix_to_rot6d(m)), m, atol=1e-5)
    # seeded: Gram-Schmidt in float32 keeps orthonormality to ~eps / sin(angle between the halves), so an unseeded
    # draw (the global RNG, in whatever state the tests before left it) with nearly parallel halves failed 1e-5
    noisy = R.rot6d_to_matrix(torch.randn(64, 6, generator=torch.Generator().manual_seed(0)))
    eye = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(noisy @ noisy.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(noisy), torch.ones(64), atol=1e-5)


def test_euler_xyz_round_trip():
    ang = (torch.rand(100, 3) - 0.5) * torch.tensor([2.0, 1.2, 2.0])
    assert torch.allclose(R.matrix_to_euler_xyz(R.euler_to_matrix(ang, "XYZ")), ang, atol=1e-5)


def test_atomic_json_and_npz(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": np.arange(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "y": [0, 1, 2]}
    atomic_save_npz(tmp_path / "b.npz", x=np.ones(3))
    assert np.load(tmp_path / "b.npz")["x"].sum() == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_jsonl_drops_torn_and_tampered_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"id": 1})
    append_jsonl(path, {"id": 2})
    rec = {"id": 3}
    rec["checksum"] = record_checksum(rec)
    rec["id"] = 4  # tampered after checksumming
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.write('{"id": 5, "chec')  # torn by a kill -9
    assert [r["id"] for r in read_jsonl(path)] == [1, 2]
    append_jsonl(path, {"id": 6})  # the next record starts on its own line, not glued to the torn one
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 6]


def test_settings_never_expose_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-123")
    public = config.JudgeSettings().public()
    assert "sk-test-SECRET-123" not in json.dumps(public)
    assert public["api_key"] == "set"


def test_cli_user_error_is_one_line(capsys):
    from hmrcritic.cli import main
    from hmrcritic.errors import InputError

    @__import__("hmrcritic.cli", fromlist=["app"]).app.command("raise-input-error-for-test", hidden=True)
    def _boom():
        raise InputError("keypoints.json: expected 17 keypoints, got 3")

    code = main(["raise-input-error-for-test"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: keypoints.json: expected 17 keypoints, got 3"]


def test_cli_help_lists_commands(capsys):
    from hmrcritic.cli import main

    assert main(["--help"]) == 0
    assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["cache_dir", "data_dir", "memory_dir", "runs_dir"])
def test_folders_live_under_test_home(name):
    assert str(getattr(config, name)()).startswith(os.environ["HMRCRITIC_HOME"])


def test_cli_propagates_typer_exit_code():
    import typer

    from hmrcritic.cli import app, main

    @app.command("exit-three-for-test", hidden=True)
    def _exit3():
        raise typer.Exit(code=3)

    assert main(["exit-three-for-test"]) == 3


def test_atomic_writes_are_world_readable(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert (path.stat().st_mode & 0o777) == 0o644


def test_pid_alive_reads_damaged_pids_as_no_process(tmp_path):
    """A lock record's pid is read back from a file: 0 or -1 made os.kill signal a process group (so "alive",
    and the advice was `kill 0`), a huge one raised OverflowError out of the waiting writer."""
    import os

    from hmrcritic.io import atomic_write_json, pid_alive
    from hmrcritic.memory.store import HOLDER_NAME, _lock_holder

    assert pid_alive(os.getpid()) and pid_alive(str(os.getpid()))
    for bad in (0, -1, 2**70, "x", None):
        assert pid_alive(bad) is False, bad
    atomic_write_json(tmp_path / HOLDER_NAME, {"pid": 0, "host": ""})
    assert _lock_holder(tmp_path)[1] is None
    atomic_write_json(tmp_path / HOLDER_NAME, {"pid": 2**70, "host": ""})
    assert _lock_holder(tmp_path)[1] is None
