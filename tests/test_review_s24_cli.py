"""Session 24 review of the CLI layer: what a user scripting the commands in bash or CI sees on stdout, stderr
and in the exit code. The commands run as a user runs them (a subprocess, stdout and stderr pipes, its own
HMRCRITIC_HOME), on the real split generator, tiny real diffusion checkpoints and the finetuner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _run(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``hmrcritic ARGS`` with stdout and stderr piped (a script, ``| tee``, a CI log: neither is a terminal)."""
    env = {**os.environ, "HMRCRITIC_HOME": str(home), "PYTHONPATH": str(TESTS)}
    for var in ("HMRCRITIC_DATA", "HMRCRITIC_RUNS", "HMRCRITIC_CACHE", "HMRCRITIC_MEMORY", "HMRCRITIC_CHROMA_URL"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "hmrcritic.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=home.parent)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch
    from test_export import tiny_model
    from test_finetune import TINY

    from hmrcritic.hmr.diffusion import HMRDiffusion, save_model

    root = tmp_path_factory.mktemp("s24-models")
    torch.manual_seed(0)
    save_model(HMRDiffusion(TINY), root / "base.pt")
    return {"export": tiny_model(root / "tiny.pt"), "finetune": root / "base.pt"}


def test_finetune_piped_prints_no_progress_bar_on_stdout(models, tmp_path):
    """``finetune … > result.txt``: the rich bar's last frame ("finetune ━━━ 3/3 loss …") was the first line of
    stdout, ahead of the result a script reads; it belongs on stderr with the notes."""
    from test_finetune import write_dataset

    data = write_dataset(tmp_path / "prefs")
    r = _run(["finetune", "--data", str(data), "--out", str(tmp_path / "ft.pt"), "--model", str(models["finetune"]),
              "--steps", "3", "--batch-size", "2", "-n", "4"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("aligned checkpoint (EMA weights) -> "), r.stdout
    assert "━" not in r.stdout and "finetune ━" in r.stderr, (r.stdout, r.stderr)


def test_export_piped_prints_no_progress_bar_on_stdout_and_plain_progress_on_stderr(models, tmp_path):
    """``export … | tee log`` (CI): the bar's last frame led stdout, and until then the log showed nothing of an
    export that can run for an hour. Now stdout is the summary alone; stderr has plain progress lines."""
    gen = _run(["data", "generate", "--split", "wild", "--n", "3"], tmp_path)
    assert gen.returncode == 0, gen.stderr
    r = _run(["export", "--split", "wild", "-n", "4", "--steps", "2", "--model", str(models["export"]),
              "--no-memory", "--scorer", "test_export:fake_score", "--out", str(tmp_path / "ds")], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"export → {tmp_path / 'ds'}"), r.stdout
    assert "━" not in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert [line for line in r.stderr.splitlines() if line.startswith("export: ")][-1] == "export: 3/3 groups"


@pytest.mark.parametrize("command", ["stats", "rules", "search", "export", "import", "reset", "calibration"])
def test_memory_chroma_url_help_names_the_variable_it_defaults_to(command, tmp_path):
    """``memory … --chroma-url`` said "(default: embedded on disk)", but with HMRCRITIC_CHROMA_URL set every memory
    command reads and writes that server (reset drops it): the help named a default the command does not use."""
    r = _run(["memory", command, "--help"], tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert "HMRCRITIC_CHROMA_URL" in " ".join(r.stdout.replace("│", " ").split()), r.stdout
    assert not (tmp_path / "home").exists()  # --help writes nothing


@pytest.mark.parametrize("command", [["runs", "prune"], ["memory", "reset"]])
def test_a_question_with_stdin_closed_is_a_refusal_that_says_to_add_yes(command, tmp_path):
    """``hmrcritic runs prune <&-`` (stdin closed: a service manager, a detached job) failed as "error:
    RuntimeError: input(): lost sys.stdin (run with --debug for the traceback)"; it is a question nobody can
    answer, as with an empty stdin: exit 1, nothing changed, and the way to go ahead named."""
    (tmp_path / "home").mkdir()
    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "hmrcritic.cli", *command], capture_output=True, text=True, env=env,
                       timeout=300, cwd=tmp_path, preexec_fn=lambda: os.close(0))
    assert r.returncode == 1, r.stderr
    assert "RuntimeError" not in r.stderr and "nothing changed" in r.stderr and "add --yes" in r.stderr, r.stderr
    assert r.stdout == ""


def test_finetune_json_keeps_its_notes_on_stderr(models, tmp_path):
    """``finetune --json`` turned the progress off, and with it every note (they are printed only with progress):
    aligning another model than the one that sampled the dataset, all groups tied, fewer hypotheses than -n were
    said without --json and not with it. Now stdout is the JSON alone and the notes are on stderr."""
    import json

    from test_finetune import write_dataset

    data = write_dataset(tmp_path / "prefs")  # sampled by model "x": not the model being aligned
    r = _run(["finetune", "--data", str(data), "--out", str(tmp_path / "ft.pt"), "--model", str(models["finetune"]),
              "--steps", "2", "--batch-size", "2", "-n", "4", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["checkpoint"] == str(tmp_path / "ft.pt")
    assert "the preferences are about another model's samples" in r.stderr, r.stderr


def test_export_json_is_one_document_with_progress_on_stderr(models, tmp_path):
    """``export --json`` in CI: stdout one JSON document, and progress lines on stderr (it had none at all)."""
    import json

    assert _run(["data", "generate", "--split", "wild", "--n", "2"], tmp_path).returncode == 0
    r = _run(["export", "--split", "wild", "-n", "4", "--steps", "2", "--model", str(models["export"]),
              "--no-memory", "--scorer", "test_export:fake_score", "--out", str(tmp_path / "ds"), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["groups"] == 2
    assert "export: 2/2 groups" in r.stderr.splitlines(), r.stderr


def _special_targets(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, and a link to the process's stdout as /dev/stdout is one (here, inside tmp_path: the test must not
    be able to replace the real /dev/stdout when the command gets it wrong)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    return {"fifo": fifo, "link": link}


@pytest.mark.parametrize("kind", ["fifo", "link"])
@pytest.mark.parametrize("command", [["memory", "export"], ["body", "export-obj"]])
def test_an_output_file_that_is_a_pipe_or_dev_stdout_is_refused_and_left_alone(command, kind, tmp_path):
    """``memory export /dev/stdout | jq``: the atomic write renamed its temporary file over the link, so as root
    (a container) /dev/stdout became a regular file holding the export for every process, nothing reached the
    pipe, and the command said "wrote /dev/stdout", exit 0. A FIFO was swapped for a file its reader never saw."""
    import stat

    home = tmp_path / "home"
    home.mkdir()
    target = _special_targets(tmp_path)[kind]
    r = _run([*command, str(target)], home)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "is not a regular file" in r.stderr and "wrote" not in r.stdout, (r.stdout, r.stderr)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    else:
        assert target.is_symlink() and os.readlink(target) == "/proc/self/fd/1"
