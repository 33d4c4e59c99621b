"""Session 33, re-read of round 4 (a4c6ac9..eb67f5b): bugs found, each shown by a test.

Each failed on that code (strict xfails in the re-read's report, with proposed diffs) and passes since the fixes
(session 33).
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from test_review_s33_userdata import _kp_file, _photo


def test_a_refused_resume_leaves_a_finished_dataset_finished(tmp_path, capsys, small_prior):
    """A finished export resumed with an input changed under its id is refused (round 4) — but only after the
    header was rewritten as unfinished, so validate and finetune then told the user to "re-run the same export
    command to continue", which is refused the same way every time (the duplicate-id check was moved ahead of the
    header for this very reason)."""
    from test_export import tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.cli import main

    model = tiny_model(tmp_path / "tiny.pt")
    _photo(tmp_path, "a.png"), _kp_file(tmp_path, "a.json")
    listing = tmp_path / "inputs.jsonl"
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "a.json", "focal": 1600}) + "\n")
    out = tmp_path / "ds"
    argv = ["export", "--data", str(listing), "--model", str(model), "-n", "2", "--steps", "2", "--no-memory",
            "--out", str(out)]
    assert main(argv) == 0
    assert D.read_header(out).counts.get("finished") is True
    before = (out / D.HEADER).read_bytes()
    listing.write_text(json.dumps({"image": "a.png", "keypoints": "a.json", "focal": 1500}) + "\n")
    capsys.readouterr()
    assert main(argv) == 2
    assert "has other K" in capsys.readouterr().err
    assert D.read_header(out).counts.get("finished") is True  # was: False
    assert (out / D.HEADER).read_bytes() == before
    assert D.validate_dataset(out).warnings == []


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with(tmp_path, name, before: list, after: list):
    """A 6x4 PNG with extra chunks before and after its pixel data."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 4)).save(buf, "PNG")
    b, chunks, i = buf.getvalue(), [], 8
    while i < len(b):
        (n,) = struct.unpack(">I", b[i:i + 4])
        chunks.append((b[i + 4:i + 8], b[i + 8:i + 8 + n]))
        i += 12 + n
    ihdr, idat, iend = chunks[0], [c for c in chunks if c[0] == b"IDAT"], chunks[-1]
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(k, d) for k, d in [ihdr, *before, *idat, *after, iend]))
    return path


def _exif(orientation: int) -> bytes:
    from PIL import Image

    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


@pytest.mark.parametrize("case", ["early and late eXIf", "fcTL of a still PNG"])
def test_a_png_is_sized_as_read_image_turns_it(tmp_path, case):
    """Where PIL's load() (read_image's exif_transpose) takes the orientation from, image_size_of must too:

    - two eXIf chunks (one ahead of the pixels, one after; the spec allows one, tools that append metadata write a
      second): load() replaces the early one with the late one and turns the image by it, while image_size_of read
      the early one, without walking the chunks;
    - an fcTL chunk after the pixels of a PNG that is not animated (no acTL): load_end stops at an fcTL only when
      the image is animated, the chunk walk at any, missing the eXIf after it.

    An input list sized such a photo 6x4 while read_image gave 4x6 (keypoints hidden at the wrong border, the
    default K of the other frame, the overlays refused as of another size)."""
    from hmrcritic.hmr.data import image_size_of, read_image

    if case == "early and late eXIf":
        p = _png_with(tmp_path, "two.png", [(b"eXIf", _exif(3))], [(b"eXIf", _exif(6))])
    else:
        p = _png_with(tmp_path, "fctl.png", [], [(b"fcTL", bytes(26)), (b"eXIf", _exif(6))])
    assert read_image(p).shape[:2] == (6, 4)  # turned by the late 6
    assert image_size_of(p) == (4, 6)


@pytest.mark.parametrize("layout", ["comment first", "utf-16"])
def test_any_input_list_given_to_evaluate_says_which_command_takes_it(tmp_path, layout):
    """Round 4 names an input list given to ``evaluate --data`` ("a list ... is for export --data"), but only one
    whose first byte (after a UTF-8 BOM and white space) is { or [: a list that opens with a ``#`` comment line, or
    one a Windows tool saved as UTF-16 — both of which ``export --data`` reads — still read "not a readable .npz
    archive of arrays (ValueError)"."""
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.userdata import read_labelled

    listing = tmp_path / "inputs.jsonl"
    entry = json.dumps({"image": "a.png", "keypoints": "a.json"}) + "\n"
    if layout == "comment first":
        listing.write_text("# my photos\n" + entry)
    else:
        listing.write_text(entry, encoding="utf-16")
    with pytest.raises(InputError, match="a JSON file, not an .npz: .* is for export --data"):
        read_labelled(listing)
