"""Review s14 (alignux): what a user reads from `export` and `finetune` when a run resumes or has nothing left to
do — no NaN loss, no "0.00 groups/s", counts of these inputs rather than of the whole folder."""

from __future__ import annotations

from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)
from test_finetune import base_ckpt, write_dataset  # noqa: F401  (fixture)

from hmrcritic.alignment import export as E
from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.cli import main


def _interrupted_on_call(real, n: int):
    """``real`` as a user's Ctrl-C meets it: its ``n``-th call raises KeyboardInterrupt instead of running."""
    calls = []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    return wrapped


def _ft_cfg(data, base, out, **kw):
    kw = {"steps": 2, "batch_size": 2, "num_generations": 4, "checkpoint_every": 1, "lr": 1e-3, **kw}
    return FinetuneConfig(data=str(data), model=str(base), out=str(out), **kw)


def test_rerunning_a_finished_finetune_says_so_instead_of_loss_nan(base_ckpt, tmp_path, capsys):  # noqa: F811
    """Re-running a finetune that had finished showed a full progress bar with "loss nan" (the bar's initial
    value, never updated as no step ran): it read as a diverged run, and nothing said the run was complete."""
    data = write_dataset(tmp_path / "prefs", n_groups=4, N=4)
    out = tmp_path / "ft.pt"
    finetune(_ft_cfg(data, base_ckpt, out))
    capsys.readouterr()
    finetune(_ft_cfg(data, base_ckpt, out), progress=True)
    cap = capsys.readouterr()
    assert "nan" not in (cap.out + cap.err).lower()
    assert "already at step 2 of --steps 2" in cap.err and "nothing left to train" in cap.err
    # resumed part-way, the bar starts from the loss the run stopped at, not "nan"
    finetune(_ft_cfg(data, base_ckpt, out, steps=3), progress=True)
    cap = capsys.readouterr()
    assert "nan" not in (cap.out + cap.err).lower() and "3/3" in cap.out


def test_finetune_cli_summary_without_log_records_says_none_logged(base_ckpt, tmp_path, capsys):  # noqa: F811
    """With the log gone (deleted to save space) a finished run's re-run printed "last step: " and nothing."""
    data = write_dataset(tmp_path / "prefs", n_groups=4, N=4)
    out = tmp_path / "ft.pt"
    args = ["finetune", "--data", str(data), "--out", str(out), "--model", str(base_ckpt), "--steps", "2",
            "--batch-size", "2", "--num-generations", "4"]
    assert main(args) == 0
    (tmp_path / "ft.pt.log.jsonl").unlink()
    capsys.readouterr()
    assert main(args) == 0
    out_text = capsys.readouterr().out
    assert "last step: none logged" in out_text, out_text


def test_fully_resumed_export_says_nothing_was_left_not_a_zero_rate(model_path, tmp_path, capsys):  # noqa: F811
    """An export whose every group was already written reported "0.00 groups/s" (and a bar frozen at N/N with a
    blank rate and ETA): it read as a stalled export. It now says nothing was left and what the dataset holds."""
    inputs = make_inputs(3)
    export_cfg = cfg_for(tmp_path / "ds", model_path)
    E.export(export_cfg, inputs=inputs)
    capsys.readouterr()
    again = E.export(export_cfg, inputs=inputs, progress=True)
    bar = capsys.readouterr().out
    assert "groups/s" not in bar and "ETA" not in bar
    text = E.format_summary(again)
    assert "groups/s" not in text
    assert "nothing left to do: all 3 input(s) already have their group; the dataset holds 3 group(s), 3 pairs" in text
    # a run that wrote nothing because every remaining group failed: no rate either, and it says they failed
    failed = again.model_copy(update={"failures": 2, "done_before": 1, "groups": 1})
    assert "no new group written (2 failed" in E.format_summary(failed)
    # a run that wrote something keeps its rate
    assert "groups/s" in E.format_summary(again.model_copy(update={"new_groups": 1, "groups_per_s": 2.0}))


def test_export_with_a_smaller_limit_counts_these_inputs(model_path, tmp_path):  # noqa: F811
    """Re-running into a folder exported with a larger --limit counted every group of the folder as done for
    these inputs: "groups: 4/2 (already done 4)", and the progress callback went past its total."""
    inputs = make_inputs(4)
    E.export(cfg_for(tmp_path / "ds", model_path), inputs=inputs)
    seen = []
    s = E.export(cfg_for(tmp_path / "ds", model_path, limit=2), inputs=inputs,
                 progress=lambda done, total: seen.append((done, total)))
    assert (s.inputs, s.done_before, s.new_groups, s.groups) == (2, 2, 0, 4)
    text = E.format_summary(s)
    assert "groups: 2/2 (new 0, already done 2" in text and "holds 4 groups" in text
    # one input of a smaller run still to do: the callback stays within its total
    (tmp_path / "ds" / "manifest.jsonl").write_text(
        "".join((tmp_path / "ds" / "manifest.jsonl").read_text().splitlines(keepends=True)[1:]))
    s = E.export(cfg_for(tmp_path / "ds", model_path, limit=2), inputs=inputs,
                 progress=lambda done, total: seen.append((done, total)))
    assert (s.done_before, s.new_groups) == (1, 1) and seen == [(2, 2)]


def test_ctrl_c_in_finetune_says_where_a_rerun_resumes(base_ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Ctrl-C in `finetune` exited 130 in silence (typer turns KeyboardInterrupt into a quiet exit, so the CLI's
    "interrupted" line never showed): nothing said that the steps since the last saved state are lost."""
    import hmrcritic.alignment.finetune as F

    data = write_dataset(tmp_path / "prefs", n_groups=4, N=4)
    real = F.compute_loss
    monkeypatch.setattr(F, "compute_loss", _interrupted_on_call(real, 3))
    args = ["finetune", "--data", str(data), "--out", str(tmp_path / "ft.pt"), "--model", str(base_ckpt),
            "--steps", "5", "--batch-size", "2", "--num-generations", "4", "--checkpoint-every", "2", "--json"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted:" in err and "holds step 2 of 5" in err and "resume" in err, err
    # a re-run resumes there and finishes
    monkeypatch.setattr(F, "compute_loss", real)
    assert main(args) == 0


def test_ctrl_c_in_export_says_what_is_kept(model_path, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Ctrl-C in `export` exited 130 in silence; it now says how many groups are kept and how to resume."""
    import hmrcritic.alignment.export as EX

    monkeypatch.setattr(EX, "_write_group", _interrupted_on_call(EX._write_group, 2))
    monkeypatch.setattr(EX, "load_inputs", lambda cfg: ([EX.strip_labels(s) for s in make_inputs(3)], "inline"))
    args = ["export", "--split", "inline", "--out", str(tmp_path / "ds"), "--model", str(model_path),
            "--num-generations", "4", "--steps", "2", "--no-memory", "--scorer", "test_export:fake_score", "--json"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted: the 1 group(s)" in err and "resume" in err, err
