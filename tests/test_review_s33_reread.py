"""Session 33 re-read (helper rfull1): bugs found in the session's change, each shown by a test.

Every test marked ``xfail(strict=True)`` fails on the current code and documents a bug reported to the lead with its
proposed fix; un-mark it when the fix lands (strict: it then fails as XPASS until un-marked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmrcritic.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _standing_kp() -> list:
    from test_review_s32_keypoints import standing_coco

    return standing_coco().tolist()


def _photo(path: Path, size=(640, 480), orientation: int | None = None, mark=None) -> Path:
    """An RGB image of ``size`` (W, H) as stored; ``orientation``: its EXIF orientation tag; ``mark``: (u, v) of the
    one white pixel, in the stored frame."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    if mark is not None:
        a[mark[1], mark[0]] = 255
    im = Image.fromarray(a)
    if orientation is None:
        im.save(path)
    else:
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
    return path


# --------------------------------------------------------------------------------- critique's own sampled file
@pytest.mark.usefixtures("small_prior")
def test_critiques_own_sampled_file_is_checked_against_the_camera(tmp_path, monkeypatch, capsys):
    """``critique`` samples with ``--principal-point`` and writes sampled_hypotheses.npz ("--hypotheses reads it back
    as the same group"); read back *without* the flag, the bodies are projected with another K. ``sample``'s
    hypotheses.npz is refused in that case (_check_sampled_camera, this session); critique's own file is not, as it
    stores only the four SMPL arrays."""
    from hmrcritic.cli import main
    from hmrcritic.commands import agent as agent_cmd

    monkeypatch.setenv("HMRCRITIC_USE_MEMORY", "0")
    n = 2
    hyps = {"global_orient": np.tile(np.array([[np.pi, 0.0, 0.0]], np.float32), (n, 1)),
            "body_pose": np.zeros((n, 69), np.float32), "betas": np.zeros((n, 10), np.float32),
            "transl": np.tile(np.array([[0.0, 0.0, 6.0]], np.float32), (n, 1))}
    monkeypatch.setattr(agent_cmd, "_hypotheses_from_model", lambda *a, **k: dict(hyps))  # no model needed
    img, kp = _photo(tmp_path / "img.png"), tmp_path / "kp.json"
    kp.write_text(json.dumps(_standing_kp()))
    base = ["critique", "--image", str(img), "--keypoints", str(kp), "--no-render"]
    assert main([*base, "-n", str(n), "--principal-point", "900,100", "--out", str(tmp_path / "c1")]) == 0
    capsys.readouterr()
    again = main([*base, "--hypotheses", str(tmp_path / "c1" / "sampled_hypotheses.npz"),
                  "--out", str(tmp_path / "c2")])
    err = capsys.readouterr().err
    assert again == 2 and "principal point (900, 100)" in err, err


# --------------------------------------------------------------------------------- intrinsics of a rotated photo
def test_exif_6_moves_the_principal_point_not_a_swap(tmp_path):
    """The physics the refusal's advice must follow (passes): a phone photo stored landscape with EXIF orientation 6
    is turned clockwise to upright; the stored pixel (cx, cy) lands at (H - 1 - cy, cx), not at (cy, cx)."""
    from hmrcritic.hmr.data import read_image

    W, H, cx, cy = 640, 480, 300, 200
    up = read_image(_photo(tmp_path / "o6.png", (W, H), orientation=6, mark=(cx, cy)))
    v, u = (int(x[0]) for x in np.nonzero(up[..., 0]))
    assert up.shape[:2] == (W, H) and (u, v) == (H - 1 - cy, cx) and (u, v) != (cy, cx)


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_raw_frame_calibration_of_a_rotated_photo_is_turned_with_it(tmp_path, orientation):
    """The advice was "swap fx/fy and cx/cy", which puts a phone photo's (EXIF 6) principal point 80 px off: the
    calibration of the raw frame is now turned as the pixels are (fixed in session 33 after this re-read). The
    principal point lands where read_image puts the raw pixel at (cx, cy), within the half pixel of the conventions
    (pixel index vs continuous coordinate)."""
    from hmrcritic.hmr.data import read_image, sample_from_user

    W, H, cx, cy = 640, 480, 300, 200
    img = _photo(tmp_path / "o.png", (W, H), orientation=orientation, mark=(cx, cy))
    up = read_image(img)
    v, u = (int(x[0]) for x in np.nonzero(up[..., 0]))
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps([[100 + 10 * (i % 5), 100 + 20 * i, 0.9] for i in range(17)]))
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps({"fx": 500, "fy": 520, "cx": cx, "cy": cy, "width": W, "height": H}))
    K = sample_from_user(img, kp, intrinsics=cam).K
    assert (K[0, 0], K[1, 1]) == (520, 500)  # the axes swap
    assert abs(K[0, 2] - (u + 0.5)) <= 0.5 and abs(K[1, 2] - (v + 0.5)) <= 0.5, (K[0, 2], K[1, 2], u, v)
    cam.write_text(json.dumps({"fx": 500, "fy": 520, "cx": cx, "cy": cy}))  # no size: which frame is unknown
    with pytest.warns(UserWarning, match="give the file its width and height"):
        sample_from_user(img, kp, intrinsics=cam)


# --------------------------------------------------------------------------------- export --data input lists
def _inputs_npz(path: Path, n: int) -> Path:
    kp = np.asarray(_standing_kp(), np.float32)
    K = np.array([[640.0, 0, 320], [0, 640, 240], [0, 0, 1]], np.float32)
    np.savez(path, keypoints=np.tile(kp, (n, 1, 1)), K=K, image_size=np.array([640, 480]))
    return path


def test_npz_default_ids_do_not_depend_on_the_row_count(tmp_path):
    from hmrcritic.alignment import dataset as D
    from hmrcritic.hmr.userdata import read_inputs

    path = tmp_path / "kp.npz"
    before = [s.sample_id for s in read_inputs(_inputs_npz(path, 10))]
    after = [s.sample_id for s in read_inputs(_inputs_npz(path, 11))]
    source = f"data:{path.resolve()}"  # ExportConfig.source of --data path: the same file, so the export resumes
    assert [D.group_id_for(source, i, 0) for i in before] == [D.group_id_for(source, i, 0) for i in after[:10]]


# --------------------------------------------------------------------------------- evaluate --data
def test_read_labelled_refuses_a_limit_below_one(tmp_path):
    from hmrcritic.hmr.userdata import read_labelled

    path = _inputs_npz(tmp_path / "lab.npz", 3)
    arrays = dict(np.load(path))
    arrays.update(global_orient=np.zeros((3, 3)), body_pose=np.zeros((3, 69)), betas=np.zeros((3, 10)),
                  transl=np.tile([0.0, 0.0, 5.0], (3, 1)))
    np.savez(path, **arrays)
    assert read_labelled(path)[1] == 3
    with pytest.raises(InputError, match="limit"):
        read_labelled(path, limit=-1)


# --------------------------------------------------------------------------------- redact
@pytest.mark.parametrize("text", ['{"used_token": "ghp_abcdef1234567890"}', '{"token_used": "ghp_abcdef1234567890"}',
                                  "https://x.example/cb?token_number=ghs_x1y2z3w4v5&x=1"])
def test_a_token_beside_an_ambiguous_word_is_still_masked(text):
    """Masked before session 33 (eb7ccc3's scrub gives "***" for each); the counts the change meant to show
    (max_token, token_count, token_limit) stay readable with the narrower list."""
    from hmrcritic.redact import scrub

    assert "ghp_" not in scrub(text) and "ghs_" not in scrub(text)


# --------------------------------------------------------------------------------- docs
def test_readme_cites_test_files_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"tests/test_review_s33_\w+\.py", text))
    assert cited and not {c for c in cited if not (ROOT / c).exists()}
