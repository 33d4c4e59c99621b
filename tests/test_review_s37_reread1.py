"""Adversarial re-read of session 37's changes (commits after 1f04d78). Each test but the last of the keyword ones
failed before its fix (errors.keywords_checked on a function taking **kwargs; Sample.__repr__ raising)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmrcritic.errors import InputError


# --------------------------------------------------------------------------- errors.keywords_checked + **kwargs
def test_critique_groups_missing_items_is_not_reported_as_an_unknown_forwarded_keyword():
    """``fresh`` is a critique_group keyword critique_groups forwards (its **kwargs): with ``items`` forgotten the
    line must say that ``items`` is missing, not that ``fresh`` is unknown (it names the one argument that is
    right and hides the one that is wrong)."""
    from hmrcritic.agent.api import critique_groups

    with pytest.raises(InputError) as got:
        critique_groups(fresh=True)
    msg = str(got.value)
    assert "unknown" not in msg, msg
    assert "items" in msg.split(" (critique_groups takes")[0], msg


def test_critique_groups_too_many_positionals_is_not_reported_as_an_unknown_forwarded_keyword():
    """``workers`` is keyword-only: passing it fifth is the mistake, and the line must say so."""
    from hmrcritic.agent.api import critique_groups

    with pytest.raises(InputError) as got:
        critique_groups([], None, None, None, 2, fresh=True)
    msg = str(got.value)
    assert "unknown" not in msg and "positional" in msg, msg


def test_critique_groups_still_names_a_misspelt_forwarded_keyword():
    """Guard for the fix above: a keyword neither function takes is still refused with the closest one."""
    from hmrcritic.agent.api import critique_groups

    with pytest.raises(InputError, match="did you mean 'fresh'"):
        critique_groups([], fersh=True)


# ------------------------------------------------------------------------------------------------ Sample repr
def _sample(**over):
    from hmrcritic.hmr.data import Sample

    fields = {"sample_id": "s", "keypoints": np.ones((17, 3), np.float32),
              "K": np.array([[500.0, 0, 100], [0, 500.0, 100], [0, 0, 1]]), "image_size": (200, 200)}
    fields.update(over)
    return Sample(**fields)


def test_sample_repr_of_grad_keypoints_does_not_raise():
    """critique_group now accepts keypoints from a differentiable detector (api._sample_arrays detaches them);
    printing that same Sample raised "Can't call numpy() on Tensor that requires grad" — the dataclass repr it
    replaced never raised."""
    s = _sample(keypoints=torch.ones(17, 3, requires_grad=True))
    text = repr(s)
    assert text.startswith("Sample(sample_id='s'") and "17/17 keypoints visible" in text


def test_sample_repr_of_a_hand_made_sample_without_image_size_does_not_raise():
    """A Sample built by hand with ``image_size=None`` (or a single int) printed before; now repr raised
    "'NoneType' object is not iterable" — in a notebook, a traceback, a debugger's variables view."""
    assert "image_size=None" in repr(_sample(image_size=None))
    assert "image_size=640" in repr(_sample(image_size=640))
