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
