"""Session 23 review, a second read of the round's changes (part b): the messages of an export stopped or finished
by an unusable VLM endpoint as finetune reads it, and the CLI's file-in-the-way hint. Real parts throughout (the
tiny diffusion model, the export, the dataset reader, the CLI); the only double is the OpenAI-compatible endpoint
on 127.0.0.1 (tests/openai_stub_server.py)."""

from __future__ import annotations

import errno

import pytest
from openai_stub_server import StubOpenAIServer
from test_export import cfg_for, make_inputs, tiny_model
from test_review_s22_vlmdown import SCORER, vlm_env

from hmrcritic import cli
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.alignment.finetune import FinetuneConfig, finetune
from hmrcritic.errors import AssetError, JudgeError


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def test_finetune_on_an_export_stopped_before_its_first_group_says_how_many_were_not_attempted(
        model_path, tmp_path, monkeypatch, capsys):
    """The export's first three groups met a refused key, it stopped and never sent the other two. `hmrcritic
    finetune` said "5 input(s) failed meanwhile" of them all, though validate (and the finetune's note on an
    export that holds groups) say how many were not attempted."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    root = tmp_path / "ds"
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        with pytest.raises(JudgeError, match="export stopped"):
            export(cfg_for(root, model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(5))
    assert not (root / D.MANIFEST).exists() or not D.read_manifest(root)
    capsys.readouterr()
    rc = cli.main(["finetune", "--data", str(root), "--out", str(tmp_path / "a.pt"), "--model", str(model_path),
                   "--steps", "1", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "5 input(s) failed meanwhile" in err and "2 of them were not attempted" in err, err
    assert "3 were tried and failed" in err, err


def test_finetune_on_a_finished_export_that_wrote_no_group_names_its_failures(model_path, tmp_path, monkeypatch):
    """With the stop now only while groups are still to come, an export of three inputs whose endpoint refused
    every one finishes (header finished, an empty manifest) instead of stopping unfinished: finetune's reader then
    said only "no complete groups", where the unfinished export had been told with its failures."""
    root = tmp_path / "ds"
    with StubOpenAIServer(default="401_echo", require_images=False) as srv:
        vlm_env(monkeypatch, srv.base_url)
        s = export(cfg_for(root, model_path, judge="vlm", score_group=SCORER), inputs=make_inputs(3))
    assert (s.groups, s.failures) == (0, 3)
    assert D.read_header(root).counts["finished"] is True
    ft = FinetuneConfig(data=str(root), model=str(model_path), out=str(tmp_path / "a.pt"), steps=1, batch_size=2,
                        num_generations=4, threads=1)
    with pytest.raises(AssetError, match=r"no complete groups; 3 input\(s\) of the export failed") as exc:
        finetune(ft)
    # no group written: a re-run takes the folder over whatever changed, so no word of a refusal (session 29)
    assert "failures.jsonl" in str(exc.value) and str(exc.value).endswith("re-running the same export retries them")


@pytest.mark.parametrize("name", ["~hmrcritic-no-such-user-s23", "plainfile"])
def test_file_in_the_way_hint_never_raises_in_the_error_handler(tmp_path, monkeypatch, name):
    """The hint walked ``exc.filename`` after ``expanduser()``: a path beginning "~nouser" (a folder of that name, as
    the system call took it) raised RuntimeError inside the OSError handler, so a one-line exit 2 became an
    "unexpected error"; a bytes filename raised TypeError. The literal path's file is now the one named."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text("x")
    line = cli._os_error(NotADirectoryError(errno.ENOTDIR, "Not a directory", f"{name}/sub/x"))
    assert f"{tmp_path / name} is a file, where a folder is needed" in line, line
    line = cli._os_error(NotADirectoryError(errno.ENOTDIR, "Not a directory", f"{name}/sub/x".encode()))
    assert "is a file, where a folder is needed" in line, line
