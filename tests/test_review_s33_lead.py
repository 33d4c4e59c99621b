"""The lead's own fixes of session 33, beside the camera flags (tests/test_review_s33_intrinsics.py)."""

import socket

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("small_prior")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("render", [False, True])
def test_critique_says_a_vlm_without_renders_sees_no_images(tmp_path, monkeypatch, capsys, render):
    """``critique --judge vlm --no-render`` sent the VLM the evidence table alone without a word: a user who turned
    rendering off for speed would think a vision judge had looked at the bodies. The note is said before the input
    is read; with rendering on it is not."""
    from hmrcritic import cli

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    argv = ["critique", "--scene", "test:0", "-n", "2", "--judge", "vlm", "--base-url",
            f"http://127.0.0.1:{_closed_port()}/v1", "--memory-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o"),
            "--render" if render else "--no-render"]
    cli.main(argv)  # the endpoint refuses: the group fails, which is not what this test reads
    err = capsys.readouterr().err
    assert ("the VLM judge sees no images" in err) is (not render), err


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_memory_path_is_refused_not_made_in_the_working_folder(tmp_path, monkeypatch, blank):
    """``MemoryStore("")`` is ``Path("")``, the working folder: a Chroma database and lock files appeared there
    (found by session 33's API review for ``critique_group(memory="")``, refused there; this is the store's own
    entry)."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="path is blank"):
        MemoryStore(blank)
    assert list(tmp_path.iterdir()) == []


def test_a_retry_after_date_without_a_zone_is_read_as_gmt(monkeypatch):
    """``Retry-After: <date> -0000`` parsed as a naive datetime, read as local time: off by the machine's UTC offset
    (found by session 33's VLM review). HTTP dates are GMT."""
    import email.utils
    import time
    from types import SimpleNamespace

    from hmrcritic.agent.vlm import _retry_after_s

    monkeypatch.setenv("TZ", "America/New_York")  # UTC-5: a local reading is 5 h off
    time.tzset()
    try:
        when = email.utils.formatdate(time.time() + 30, usegmt=False).rsplit(" ", 1)[0] + " -0000"
        exc = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": when}))
        assert 25 <= _retry_after_s(exc) <= 31
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_mask_with_a_damaged_exif_block_reads_as_stored(tmp_path):
    """The mask reader turned masks upright as read_image turns images, and a damaged EXIF block (PIL's
    ``SyntaxError: not a TIFF file``) escaped it as a bare SyntaxError; read_image now uses such an image as stored
    (session 33's re-read), and so does the mask of it."""
    from PIL import Image

    from hmrcritic.agent.nodes import _read_mask

    mask = Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 2 * 255).astype(np.uint8))
    mask.save(tmp_path / "m.webp", "WEBP", lossless=True, exif=b"Exif\x00\x00" + b"\x00" * 16)
    m = _read_mask(str(tmp_path / "m.webp"), (64, 48))
    assert m.shape == (48, 64) and m[0, 1] and not m[0, 0]


def test_a_principal_point_of_strings_is_refused_as_a_focal_of_one_is():
    """``"principal_point": ["1", "2"]`` in an input list passed float() while ``"focal": "1"`` was refused."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.intrinsics import check_principal_point

    with pytest.raises(InputError, match="principal_point must be"):
        check_principal_point(["1", "2"])
    assert check_principal_point((1, 2.5)) == (1.0, 2.5)
