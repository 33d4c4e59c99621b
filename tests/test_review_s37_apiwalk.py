"""Session 37: the Python API walked end to end as a notebook user would (load a split, sample, critique, report),
then called the ways a notebook gets it wrong. Each case here was a raw TypeError / ValueError from Python or numpy,
or a printout no one can read, before this session."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hmrcritic.agent.api import critique_group, critique_groups, write_scores
from hmrcritic.agent.report import render_html, write_report
from hmrcritic.errors import InputError

pytestmark = pytest.mark.usefixtures("small_prior")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One critique of a 6-hypothesis group (no rendering, no memory): what the notebook holds after a run."""
    from test_agent_graph import cfg, make_group

    s, h, _ = make_group(37, n=6, sample_id="walk-37")
    res = critique_group(s, h, config=cfg(use_memory=False), run_dir=tmp_path_factory.mktemp("g") / "g")
    return s, h, res


def _with(sample, **changes):
    """A copy of the test sample (a SimpleNamespace, as a user's own sample object may be) with fields replaced."""
    return SimpleNamespace(**{**vars(sample), **changes})


# ---------------------------------------------------------------- a misspelt keyword names the right one
@pytest.mark.parametrize("call, typo, right", [
    (lambda s, h, r, d: critique_group(s, h, fersh=True), "fersh", "fresh"),
    (lambda s, h, r, d: critique_group(s, h, groupid="x"), "groupid", "group_id"),
    (lambda s, h, r, d: write_report(r, d, image="x.png"), "image", "image_path"),
    (lambda s, h, r, d: write_scores(r, out=d), "out", "out_dir"),
    (lambda s, h, r, d: critique_groups([(s, h)], wrokers=2), "wrokers", "workers"),
])
def test_a_misspelt_keyword_is_one_line_naming_the_right_one(scored, tmp_path, call, typo, right):
    """Python 3.11's own TypeError ("got an unexpected keyword argument 'fersh'") came out as a traceback and named
    no keyword that exists: the notebook user had to open the docstring to find ``fresh``."""
    s, h, res = scored
    with pytest.raises(InputError, match=rf"unknown argument.*'{typo}' \(did you mean '{right}'\?\)"):
        call(s, h, res, tmp_path)


def test_a_missing_argument_is_an_input_error_naming_it(scored):
    s, _, _ = scored
    with pytest.raises(InputError, match=r"critique_group: missing a required argument: 'hypotheses'"):
        critique_group(s)


def test_the_checked_functions_keep_their_signatures():
    """The keyword check wraps the functions: help(), tab completion and critique_groups' own list of the keywords
    critique_group takes read the real signature."""
    import inspect

    assert list(inspect.signature(critique_group).parameters)[:3] == ["sample", "hypotheses", "judge"]
    assert "image_path" in inspect.signature(write_report).parameters
    assert critique_group.__name__ == "critique_group" and "Critique one group" in critique_group.__doc__


# ---------------------------------------------------------------- a sample's arrays that are not numbers
@pytest.mark.parametrize("field, value, named", [
    ("keypoints", "abc", "keypoints"),
    ("keypoints", [[1, 2], [3]], "keypoints"),
    ("K", "abc", "intrinsics K"),
    ("image_size", "256x256", "image_size"),
])
def test_a_sample_field_that_is_not_numbers_is_one_line(scored, field, value, named):
    """numpy's "could not convert string to float: 'abc'" / "inhomogeneous shape" came out bare, naming neither
    the sample nor the field."""
    s, h, _ = scored
    bad = _with(s, **{field: value})
    with pytest.raises(InputError, match=rf"sample walk-37: {named} .*must be numbers, got"):
        critique_group(bad, h, group_id=f"bad-{field}")


def test_keypoints_that_require_grad_are_read(scored, tmp_path):
    """Keypoints straight from a differentiable detector (a torch tensor that requires grad) were a bare
    RuntimeError "Can't call numpy() on Tensor that requires grad"; they are the same numbers."""
    import torch

    s, h, res = scored
    kp = torch.as_tensor(s.keypoints).requires_grad_(True)
    again = critique_group(_with(s, keypoints=kp * 1.0), h,
                           config={"render": False, "use_memory": False}, run_dir=tmp_path / "g")
    assert again.overall == res.overall


# ---------------------------------------------------------------- printing a result
def test_a_scored_group_prints_as_a_summary_not_every_field(scored):
    """``res`` in a notebook cell printed pydantic's repr of every field: 11,800 characters for 8 hypotheses,
    80,000 on one line for 64 (every rationale, rule dump and evidence value)."""
    _, _, res = scored
    text = repr(res)
    assert len(text) < 600 and "\n" not in text, text
    assert text.startswith("ScoredGroup(group_id='walk-37'") and "6 hypotheses" in text
    assert f"ranking={res.ranking}" in text and f"best h{res.ranking[0]}" in text
    assert str(res) == text
    big = res.model_copy(update={"scores": res.scores * 20, "ranking": list(range(120))})
    assert len(repr(big)) < 600 and "…" in repr(big)
    assert res.model_dump()["group_id"] == "walk-37"  # the full record is still there


def test_every_scored_group_field_is_documented():
    """CONTRACTS.md lists the fields; in Python only five said what they hold (``help(ScoredGroup)``,
    ``ScoredGroup.model_fields[...]``)."""
    from hmrcritic.agent.api import ScoredGroup

    assert [k for k, f in ScoredGroup.model_fields.items() if not f.description] == []


# ---------------------------------------------------------------- the report's image argument
def test_an_image_path_that_is_not_a_path_is_one_line(scored, tmp_path):
    _, _, res = scored
    with pytest.raises(InputError, match=r"image_path must be a path \(str or Path\) or None, got int"):
        write_report(res, tmp_path, image_path=5)


def test_an_image_path_with_a_tilde_is_read_from_the_home(scored, tmp_path, monkeypatch):
    """README: every file argument reads a leading ``~`` as the home. ``image_path="~/photo.png"`` was looked for
    in a folder named ``~`` of the working folder and the report said the image was missing."""
    from PIL import Image

    _, _, res = scored
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "photo.png")
    page = render_html(res, image_path="~/photo.png")
    assert "image missing" not in page and 'alt="input image"' in page
    assert "input image" not in render_html(res, image_path="")  # "" is no image, as None is
