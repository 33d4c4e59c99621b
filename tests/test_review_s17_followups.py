"""Follow-ups of the session-17 reviews: what the VLM is shown of a user's input image, the CLI's warnings and
version, agent settings from the environment under `critique`/`evaluate-critic`, memory import ids."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from hmrcritic.agent.vlm import JudgeError, image_part


def _sent(part: dict) -> tuple[str, Image.Image]:
    url = part["image_url"]["url"]
    head, b64 = url.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(b64)))


def test_a_webp_input_image_is_sent_as_png_not_refused(tmp_path):
    """The critique read a WebP input (PIL reads it), but the VLM judge refused it as "neither PNG nor JPEG"."""
    Image.fromarray(np.full((30, 40, 3), 120, np.uint8)).save(tmp_path / "in.webp")
    head, im = _sent(image_part(tmp_path / "in.webp", "g", "input"))
    assert head == "data:image/png;base64" and im.size == (40, 30)


def test_an_exif_rotated_photo_reaches_the_vlm_upright(tmp_path):
    """Keypoints, K and the overlays use the photo upright (as OpenCV reads it); the VLM got the stored, sideways
    pixels (and scaled down with ``image_max_side``, re-encoded without the tag, sideways for good)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "side.jpg", exif=exif)
    for max_side in (None, 20):
        _, im = _sent(image_part(tmp_path / "side.jpg", "g", "input", max_side=max_side))
        assert im.size == ((30, 40) if max_side is None else (15, 20)), max_side


def test_plain_grids_go_byte_for_byte_and_a_broken_file_is_one_line(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "grid.png")
    url = image_part(tmp_path / "grid.png", "g", "overlay grid")["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == (tmp_path / "grid.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "text.webp").write_bytes(b"hello")
    for name in ("bad.png", "text.webp"):
        with pytest.raises(JudgeError, match="cannot be decoded") as exc:
            image_part(tmp_path / name, "g", "input")
        assert "\n" not in str(exc.value)
