"""Session 36, the lead's own fixes: each test failed before its fix."""

from __future__ import annotations

import shutil

import pytest
from test_review_s26_fuzz2 import _ft_cfg, finetuned  # noqa: F401  (a fixture)

from hmrcritic.errors import AssetError


def test_a_finetune_state_cut_short_is_refused_with_what_to_do(finetuned, tmp_path):  # noqa: F811
    """A resume state cut short (a full disk, a copy stopped) failed with torch's whole reader text
    ("PytorchStreamReader failed reading zip archive…") and no way out, where every other refusal of
    the state says to restore it, use another --out or --no-resume. The state is kept as it was."""
    from hmrcritic.alignment.finetune import finetune

    folder = tmp_path / "run"
    shutil.copytree(finetuned.run, folder)
    state = folder / "o.pt.state.pt"
    cut = state.read_bytes()[: state.stat().st_size // 2]
    state.write_bytes(cut)
    with pytest.raises(AssetError) as err:
        finetune(_ft_cfg(finetuned.data, finetuned.base, folder / "o.pt", steps=3))
    msg = str(err.value)
    assert msg.startswith(f"cannot resume from {state}: it is not a readable torch file (")
    assert msg.endswith("restore it, or use another --out, or --no-resume (which deletes it)")
    assert "\n" not in msg
    assert state.read_bytes() == cut


@pytest.mark.parametrize("entry", ["reproduce_model", "generate_split", "read_labelled", "explored_record"])
@pytest.mark.parametrize("value", ["", " ", "~nosuchuser-s36/x"])
def test_more_path_arguments_refuse_empty_and_unknown_home_in_one_line(tmp_path, monkeypatch, entry, value):
    """The sites the API review listed beside its fix: `reproduce(model=…)` (a bad one also left an empty run folder
    with its lock), `generate_split(out_dir="")` (the working folder), `read_labelled` (what `evaluate --data`
    reads: a quoted `~` not expanded) and the explored-record reader's memory path took "" as the working folder
    and `~nouser` as a bare RuntimeError. Each is one InputError now, and nothing is written."""
    from hmrcritic.errors import InputError

    monkeypatch.chdir(tmp_path)
    if entry == "reproduce_model":
        from hmrcritic.alignment.reproduce import reproduce

        call = lambda: reproduce("quick", out_dir=tmp_path / "run", model=value, progress=False)  # noqa: E731
    elif entry == "generate_split":
        from hmrcritic.hmr.data import generate_split

        call = lambda: generate_split("test", n=2, out_dir=value)  # noqa: E731
    elif entry == "read_labelled":
        from hmrcritic.hmr.userdata import read_labelled

        call = lambda: read_labelled(value)  # noqa: E731
    else:
        from hmrcritic.agent.explore import explored_record

        call = lambda: explored_record(value)  # noqa: E731
    with pytest.raises(InputError) as err:
        call()
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given", ["http://u:pw-s36@h:8000", "HTTPS://u:pw-s36@h:8000/x"])
def test_a_server_address_as_memory_dir_is_refused_with_its_password_masked(tmp_path, monkeypatch, capsys, given):
    """`--memory-dir http://u:pw@h:8000` reaches the store as `Path(...)` text, "http:/u:pw@h:8000" (a Path makes
    "//" one "/"): it was read as a schemeless address whose "user" is "http:/u", and the error line printed the
    password (the masker reads "scheme://" only). Read as the URL it was: refused, masked, the option named."""
    from hmrcritic import cli

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["memory", "stats", "--memory-dir", given]) == 2
    err = capsys.readouterr().err
    assert "is a server address, not a folder" in err and "--chroma-url" in err, err
    assert "pw-s36" not in err
    assert not any(p.name.lower().startswith("http") for p in tmp_path.iterdir())
