"""Review s28 (hints): three messages a new user met in a walk-through, each now saying what to change.

* The VLM judge with nothing listening at its address ended, after its retries, "cannot connect to
  http://127.0.0.1:8000/v1 ([Errno 111] Connection refused)": now it asks whether a server runs there and names
  the setting that holds the address (HMRCRITIC_BASE_URL, OPENAI_BASE_URL, or the settings given in code).
* Keypoints of another image size (scaled ×1.5: knees and ankles 180 px past a 640×480 border) with fewer than a
  third of them outside were "treated as hidden (a truncated person)" only: now a point far past the border adds
  the "keypoints of another image or image size?" question (which points are hidden is unchanged).
* ``export validate`` of an unfinished export said "0 pairs", read as the DPO pairs missing: pairs.jsonl is
  written when the export finishes, and the line now says so.
"""

from __future__ import annotations

import json
import socket
import warnings

import numpy as np
import pytest
from test_export import cfg_for, fake_score, make_inputs, model_path  # noqa: F401  (fixture)
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import export
from hmrcritic.cli import main
from hmrcritic.config import JudgeSettings
from hmrcritic.hmr import data as HD

KEY = "sk-s28-hints-SECRET-77d1"


# ----------------------------------------------------------------------------------- the VLM judge, nobody home


def _refused(judge: VLMJudge) -> str:
    with pytest.raises(EndpointUnusableError) as info:
        judge.critique(make_ctx((None, None)))
    assert info.value.cause == "nothing answers there"  # the batch stop's words are unchanged
    return str(info.value)


def test_a_refused_connection_says_what_to_change(monkeypatch):
    """The README's VLM example with no server started: the error names the setting that holds the address."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with socket.socket() as held:  # bound, never listening: connection refused
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
        monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
        message = _refused(VLMJudge(JudgeSettings(model="stub-vlm")))
        assert f"cannot connect to {url}" in message and "refused" in message.lower()
        assert "is a server running there?" in message and "(--base-url or HMRCRITIC_BASE_URL)" in message
        assert KEY not in message
        # from OPENAI_BASE_URL when HMRCRITIC_BASE_URL is unset (the order JudgeSettings reads them in)
        monkeypatch.delenv("HMRCRITIC_BASE_URL")
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        assert "(OPENAI_BASE_URL)" in _refused(VLMJudge(JudgeSettings(model="stub-vlm")))
        # given in code: no variable holds it (one that holds another address is not named)
        monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:9/v1")
        message = _refused(VLMJudge(JudgeSettings(base_url=url, model="stub-vlm", max_retries=0)))
        assert "JudgeSettings(base_url=...)" in message and "_BASE_URL" not in message


# ----------------------------------------------------------------------------------- keypoints of another size


PERSON = [  # COCO-17 of a person standing in a 640×480 image (pixels)
    [320, 60], [330, 50], [310, 50], [345, 55], [295, 55], [370, 120], [270, 120], [390, 190], [250, 190],
    [400, 250], [240, 250], [350, 260], [290, 260], [355, 350], [285, 350], [360, 440], [280, 440],
]


def _read(tmp_path, name: str, points) -> tuple[np.ndarray, list[str]]:
    path = tmp_path / name
    path.write_text(json.dumps({"keypoints": [[float(x), float(y), 0.9] for x, y in points]}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kp = HD.read_keypoints_json(path, image_size=(640, 480))
    return kp, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_keypoints_far_past_the_border_ask_about_the_image_size(tmp_path):
    """Keypoints scaled ×1.5 about the top left (another image's size): the knees and ankles lie far below the
    480 px border, fewer than a third of the points; hidden as before, and the warning asks about the size."""
    scaled = [[x * 1.5 - 160, y * 1.5] for x, y in PERSON]  # shifted back into the width: only y overshoots
    kp, said = _read(tmp_path, "scaled.json", scaled)
    hidden = [i for i in range(17) if (kp[i] == 0).all()]
    assert hidden == [13, 14, 15, 16]  # knees (525 px) and ankles (660 px) below a 480 px image
    assert len(said) == 1 and "treated as hidden (a truncated person?" in said[0]
    assert "15 (left_ankle) lies 180 px past the border" in said[0]
    assert "keypoints of another image or image size?" in said[0]
    # one ankle a little below the frame (a top-down detector's cut-off point): a truncated person, no question
    near = [list(p) for p in PERSON]
    near[16] = [280, 500]
    kp, said = _read(tmp_path, "near.json", near)
    assert (kp[16] == 0).all() and (kp[:16] != 0).any(axis=1).all()
    assert len(said) == 1 and said[0].endswith("treated as hidden (a truncated person)")


# ----------------------------------------------------------------------------------- validate, unfinished


INTERRUPT_AT = {"sample_id": None}  # in-process (workers=1): the export's scorer reads it


def interrupted_score(sample, hypotheses, **kw):
    """fake_score, with a Ctrl-C at one group (as a user stops a long export)."""
    if sample.sample_id == INTERRUPT_AT["sample_id"]:
        raise KeyboardInterrupt
    return fake_score(sample, hypotheses, **kw)


def test_validate_of_an_unfinished_export_does_not_report_pairs_missing(model_path, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "ds"
    inputs = make_inputs(4)
    cfg = cfg_for(root, model_path, score_group="test_review_s28_hints:interrupted_score")
    INTERRUPT_AT["sample_id"] = "img002"
    try:
        with pytest.raises(KeyboardInterrupt):
            export(cfg, inputs=inputs)
    finally:
        INTERRUPT_AT["sample_id"] = None
    assert D.read_header(root).counts.get("finished") is False and not (root / D.PAIRS).exists()
    assert len(D.read_manifest(root)) == 2
    assert main(["export", "validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 groups" in out and "pairs written when the export finishes" in out and "0 pairs" not in out
    assert main(["export", "validate", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 0  # --json keeps its meaning: the lines in the file
    # the same export run to its end: the pairs are counted again
    export(cfg, inputs=inputs)
    n = len((root / D.PAIRS).read_text(encoding="utf-8").splitlines())
    assert n > 0
    assert main(["export", "validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{n} pairs, zero-variance" in out and "when the export finishes" not in out
