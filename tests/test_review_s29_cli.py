"""Review s29 (cli): what `finetune`, `export validate`, `critique`/`sample --help` and `memory stats` tell a user —
a resumed finetune that read as a fresh run, an export stopped before its first group called INVALID while one
stopped later was OK, help texts naming fewer input forms than are read, and "read_only True" read as a frozen
memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)
from test_finetune import base_ckpt, write_dataset  # noqa: F401  (fixture)

from hmrcritic.alignment import dataset as D
from hmrcritic.alignment import export as E
from hmrcritic.alignment.export import export
from hmrcritic.cli import main

sys.path.insert(0, str(Path(__file__).parent))


def _finetune_args(data, out, base, steps):
    return ["finetune", "--data", str(data), "--out", str(out), "--model", str(base), "--steps", str(steps),
            "--batch-size", "2", "--num-generations", "4", "--checkpoint-every", "1", "--lr", "1e-3"]


def test_a_finetune_that_resumes_an_earlier_run_says_so(base_ckpt, tmp_path, capsys):  # noqa: F811
    """`finetune --steps 3` after a 2-step run to the same --out continued it (the log went on at step 3) with only
    the progress bar starting part-way to show it: a user took it for a fresh 3-step run."""
    data = write_dataset(tmp_path / "prefs", n_groups=4, N=4)
    out = tmp_path / "ft.pt"
    assert main(_finetune_args(data, out, base_ckpt, 2)) == 0
    assert "resuming" not in capsys.readouterr().err  # a fresh run says nothing of the kind
    assert main(_finetune_args(data, out, base_ckpt, 3)) == 0
    err = capsys.readouterr().err
    assert f"resuming from step 2 of {out}.state.pt" in err and "--no-resume to start over" in err, err
    steps = [json.loads(line)["step"] for line in Path(f"{out}.log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # it did resume: the message describes what happened
    assert main([*_finetune_args(data, out, base_ckpt, 4), "--no-resume"]) == 0
    assert "resuming" not in capsys.readouterr().err


def _interrupt_before_first_group(out, model_path, monkeypatch):  # noqa: F811
    def stopped(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(E, "_write_group", stopped)
        with pytest.raises(KeyboardInterrupt):
            export(cfg_for(out, model_path), inputs=make_inputs(2))
    assert D.read_header(out).counts.get("finished") is False and not (out / D.MANIFEST).exists()


def test_validate_of_an_export_stopped_before_its_first_group_reads_as_unfinished(model_path, tmp_path,  # noqa: F811
                                                                                  monkeypatch, capsys):
    """Stopped (SIGTERM, Ctrl-C) before its first group, an export was "INVALID … error: manifest.jsonl: missing",
    which read as a folder broken beyond repair, while one stopped after a group is OK with a warning to re-run. It
    now reads as unfinished (nothing written yet; re-run to continue) and still exits 1, as README's exit codes and
    a finished export with no group have it: validate passes a folder finetune can train on, and finetune refuses
    this one. A finished export missing its manifest stays INVALID."""
    out = tmp_path / "ds"
    _interrupt_before_first_group(out, model_path, monkeypatch)
    capsys.readouterr()
    assert main(["export", "validate", str(out)]) == 1
    cap = capsys.readouterr()
    assert cap.out.startswith("UNFINISHED: ") and "INVALID" not in cap.out + cap.err, cap.out
    assert "has not written its first group yet" in cap.out, cap.out
    assert "nothing written yet" in cap.out and "re-run the same export command to continue" in cap.out, cap.out
    assert "re-run the same export command to continue" in cap.err and "invalid" not in cap.err, cap.err
    assert main(["export", "validate", str(out), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False

    # the interrupted-later case, for comparison: OK with the warning
    export(cfg_for(out, model_path), inputs=make_inputs(2))
    header = json.loads((out / D.HEADER).read_text())
    later = {**header, "counts": {**header["counts"], "finished": False}}
    (out / D.HEADER).write_text(json.dumps(later))
    capsys.readouterr()
    assert main(["export", "validate", str(out)]) == 0
    assert "did not finish" in capsys.readouterr().out
    # finished, with its manifest gone: its groups are lost, which is invalid
    (out / D.HEADER).write_text(json.dumps(header))
    (out / D.MANIFEST).unlink()
    assert main(["export", "validate", str(out)]) == 1
    cap = capsys.readouterr()
    assert cap.out.startswith("INVALID") and "manifest.jsonl: missing\n" in cap.out, cap.out


def _help_of(command: str, option: str) -> str:
    """The help text of one option, as typer holds it (the rendered help wraps it at the terminal's width)."""
    import typer

    from hmrcritic.cli import app

    cmd = typer.main.get_command(app).commands[command]
    return next(p.help for p in cmd.params if f"--{option}" in p.opts)


def test_input_help_texts_name_the_forms_that_are_read(tmp_path):
    """`critique --hypotheses` named only the four keys with a leading N, though poses (N,72), per-joint (N,23,3)
    rotations and a shared betas/transl row are read; `--keypoints` of critique and sample left out COCO-18 (OpenPose's
    COCO model, AlphaPose's OpenPose output) and AlphaPose. Each form named is read here."""
    import numpy as np

    from hmrcritic.agent.api import load_hypotheses
    from hmrcritic.hmr.data import read_keypoints_json

    hyp = _help_of("critique", "hypotheses")
    assert "poses (N,72)" in hyp and "(N,23,3)" in hyp and "shared" in hyp, hyp
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "h.npz", poses=rng.normal(0, 0.1, (3, 72)), betas=np.zeros(10), transl=np.zeros(3))
    np.savez(tmp_path / "j.npz", global_orient=np.zeros((3, 1, 3)), body_pose=rng.normal(0, 0.1, (3, 23, 3)),
             betas=np.zeros((3, 10)), transl=np.zeros((3, 3)))
    for name in ("h.npz", "j.npz"):
        assert load_hypotheses(str(tmp_path / name))["body_pose"].shape == (3, 69)

    for command in ("critique", "sample"):
        kp = _help_of(command, "keypoints")
        assert "COCO-18" in kp and "AlphaPose" in kp and "Halpe-26" in kp and "BODY_25" in kp, (command, kp)
    pts = np.c_[rng.uniform(100, 300, (18, 2)), np.ones(18)]
    (tmp_path / "coco18.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": pts.ravel().tolist()}]}))
    halpe = np.c_[rng.uniform(100, 300, (26, 2)), np.full(26, 0.9)]
    (tmp_path / "alphapose.json").write_text(json.dumps([{"image_id": "a.jpg", "category_id": 1, "score": 2.5,
                                                          "keypoints": halpe.ravel().tolist()}]))
    for name in ("coco18.json", "alphapose.json"):
        assert read_keypoints_json(tmp_path / name).shape == (17, 3)


def test_memory_stats_says_how_it_opened_the_memory_not_that_it_is_frozen(tmp_path, capsys):
    """`memory stats` printed "read_only True" of an existing memory: how stats opened it, read as "this memory is
    frozen". The line says what it is; the --json key stays."""
    from hmrcritic.memory.store import MemoryStore

    mem = tmp_path / "mem"
    MemoryStore(mem).stats()  # a seeded memory on disk
    capsys.readouterr()
    assert main(["memory", "stats", "--memory-dir", str(mem)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [ln for ln in lines if ln.startswith("read_only")], lines
    opened = [ln for ln in lines if ln.startswith("opened ")]
    assert len(opened) == 1 and "read-only" in opened[0] and "not a setting of the memory" in opened[0], lines
    assert main(["memory", "stats", "--memory-dir", str(mem), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["read_only"] is True
