"""Session 33 re-read of the third round (helper rfull6): ``git diff d3cea85 a4c6ac9`` — the PNG chunk walk of
``hmr.data._orientation_of``, TIFF header sizes, EXIF 2-4 calibrations and ``_warn_frame_unknown``.

The bugs found (strict xfails in the report, with proposed diffs) were fixed in session 33; their tests pass now.
The other tests pin what was checked and found right."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmrcritic.errors import InputError
from hmrcritic.hmr.data import exif_orientation, image_size_of, read_image, sample_from_user
from hmrcritic.hmr.intrinsics import read_intrinsics_json, upright_intrinsics

W, H, CX, CY = 64, 48, 21, 13  # a raw (stored) frame, and a marked pixel in it


# ------------------------------------------------------------------------------------------------ image makers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, i = [], 8
    while i < len(png):
        n = struct.unpack(">I", png[i:i + 4])[0]
        out.append((png[i + 4:i + 8], png[i + 8:i + 8 + n]))
        i += 12 + n
    return out


def _png(chunks) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(_chunk(k, d) for k, d in chunks)


def _with(png: bytes, new: list, where: str) -> bytes:
    """``new`` chunks put before the first IDAT (``early``), after the last one (``late``) or before IEND."""
    cs = _chunks(png)
    kinds = [k for k, _ in cs]
    at = {"early": kinds.index(b"IDAT"), "late": len(kinds) - 1 - kinds[::-1].index(b"IDAT") + 1,
          "end": kinds.index(b"IEND")}[where]
    cs[at:at] = new
    return _png(cs)


def _exif(orientation: int, endian: str = "<") -> bytes:
    """A TIFF block (no ``Exif\\0\\0`` header) with one SHORT orientation tag, little- or big-endian."""
    head = b"II*\x00" if endian == "<" else b"MM\x00*"
    return (head + struct.pack(endian + "I", 8) + struct.pack(endian + "H", 1)
            + struct.pack(endian + "HHI", 0x0112, 3, 1) + struct.pack(endian + "HH", orientation, 0)
            + struct.pack(endian + "I", 0))


def _pixels() -> Image.Image:
    a = np.zeros((H, W, 3), np.uint8)
    a[CY, CX] = 255
    return Image.fromarray(a)


def _plain_png() -> bytes:
    b = io.BytesIO()
    _pixels().save(b, "PNG")
    return b.getvalue()


def _image(path: Path, kind: str, orientation: int | None) -> Path:
    """The marked 64x48 frame stored as ``kind`` with EXIF ``orientation`` (None: no tag)."""
    im = _pixels()
    if kind in ("JPEG", "PNG", "WEBP"):
        extra = {"exif": b"Exif\x00\x00" + _exif(orientation)} if orientation else {}
        extra.update({"quality": 100} if kind != "PNG" else {})
        extra.update({"lossless": True} if kind == "WEBP" else {})
        im.save(path, kind, **extra)
    elif kind == "TIFF":
        im.save(path, "TIFF", **({"tiffinfo": {274: orientation}} if orientation else {}))
    elif kind == "TIFF-2pages":  # the first page is the one read; the second, of another size, is not
        im.save(path, "TIFF", save_all=True, append_images=[Image.new("RGB", (10, 30))],
                **({"tiffinfo": {274: orientation}} if orientation else {}))
    elif kind.startswith("PNG-") and not orientation:
        path.write_bytes(_plain_png())
    elif kind.startswith("PNG-"):  # PNG-late, PNG-late-header, PNG-late-bigendian, PNG-early-bigendian
        raw = _exif(orientation, ">" if "bigendian" in kind else "<")
        raw = b"Exif\x00\x00" + raw if "header" in kind else raw
        path.write_bytes(_with(_plain_png(), [(b"eXIf", raw)], "early" if "early" in kind else "late"))
    else:  # GIF, BMP: no EXIF
        im.save(path, kind)
    return path


# ------------------------------------------------------------------ image_size_of == read_image, every format
_EXIF_KINDS = ["JPEG", "PNG", "WEBP", "TIFF", "TIFF-2pages", "PNG-late", "PNG-late-header", "PNG-late-bigendian",
               "PNG-early-bigendian"]


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("kind", _EXIF_KINDS)
def test_the_header_size_and_orientation_are_read_images(tmp_path, kind, orientation):
    """Checked and right (passes): for each format PIL opens with an EXIF orientation, image_size_of gives
    read_image's (W, H) and exif_orientation the tag that turned the pixels (the marked pixel lands where
    upright_intrinsics puts a principal point at its centre)."""
    p = _image(tmp_path / "img", kind, orientation)
    a = read_image(p)
    assert image_size_of(p) == (a.shape[1], a.shape[0])
    assert exif_orientation(p) == orientation
    v, u = (int(x[0]) for x in np.nonzero(a[..., 0] > 127))
    if orientation not in (None, 1):
        K = np.array([[500.0, 0, CX + 0.5], [0, 520.0, CY + 0.5], [0, 0, 1]])
        up = upright_intrinsics(K, (W, H), orientation)
        assert (up[0, 2], up[1, 2]) == (u + 0.5, v + 0.5)
        assert (up[0, 0], up[1, 1]) == ((520.0, 500.0) if orientation >= 5 else (500.0, 520.0))


@pytest.mark.parametrize("kind", ["GIF", "BMP"])
def test_the_header_size_of_formats_without_exif(tmp_path, kind):
    """Checked (passes)."""
    p = _image(tmp_path / "img", kind, None)
    a = read_image(p)
    assert image_size_of(p) == (a.shape[1], a.shape[0]) == (W, H)
    assert exif_orientation(p) is None


# ------------------------------------------------- PNG orientation PIL reads from text chunks, not from eXIf
def _xmp(orientation: int) -> bytes:
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF>'
            b"</x:xmpmeta>" % orientation)


def _raw_profile(orientation: int) -> bytes:
    """ImageMagick's form: a tEXt/zTXt "Raw profile type exif", the block in hex."""
    block = b"Exif\x00\x00" + _exif(orientation)
    return b"Raw profile type exif\x00" + b"\nexif\n%8d\n" % len(block) + block.hex().encode() + b"\n"


@pytest.mark.parametrize("where", ["early", "late"])
@pytest.mark.parametrize("text", ["raw profile", "xmp"])
def test_a_png_turned_by_a_raw_profile_or_xmp_is_sized_as_read_image_turns_it(tmp_path, text, where):
    """read_image turns a PNG whose orientation (6) is in ImageMagick's "Raw profile type exif" text chunk or in
    an XMP packet (iTXt XML:com.adobe.xmp, tiff:Orientation): PIL's getexif reads both. ``_orientation_of`` walks
    the chunks for eXIf only when "exif" is not in ``im.info``, finds none and says None: image_size_of gives the
    stored 64x48 for an image used as 48x64 (an input list's keypoints checked against the wrong bounds, its
    default K centred in the wrong frame) and exif_orientation None (a raw-frame calibration refused or not turned).
    Round 2's ``im.getexif()`` got all four right."""
    chunk = (b"tEXt", _raw_profile(6)) if text == "raw profile" else (b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
                                                                      + _xmp(6))
    p = tmp_path / "t.png"
    p.write_bytes(_with(_plain_png(), [chunk], where))
    a = read_image(p)
    assert (a.shape[1], a.shape[0]) == (H, W)
    assert image_size_of(p) == (H, W)
    assert exif_orientation(p) == 6


# ----------------------------------------------------------- eXIf chunks PIL never reads, or reads the last of
def test_an_apng_eXIf_after_its_second_frame_is_not_read(tmp_path):
    """An animated PNG with an eXIf added before IEND (after the second frame's fcTL/fdAT, where a tool appending
    metadata puts it): PIL stops reading chunks at the next frame's fcTL, so read_image does not turn it (64x48);
    the walk reads on to the eXIf and image_size_of says 48x64, exif_orientation 6."""
    b = io.BytesIO()
    _pixels().save(b, "PNG", save_all=True, append_images=[Image.new("RGB", (W, H), (0, 90, 0))])
    p = tmp_path / "a.png"
    p.write_bytes(_with(b.getvalue(), [(b"eXIf", _exif(6))], "end"))
    a = read_image(p)
    assert image_size_of(p) == (a.shape[1], a.shape[0])
    assert exif_orientation(p) in (None, 1)


def test_two_late_eXIf_chunks_are_read_as_pil_reads_them(tmp_path):
    """Two eXIf chunks after the pixel data (6, then 3): PIL's chunk_eXIf overwrites ``info["exif"]``, so
    read_image turns the image by 3 (64x48); the walk stops at the first and says 6 (48x64)."""
    p = tmp_path / "t.png"
    p.write_bytes(_with(_plain_png(), [(b"eXIf", _exif(6)), (b"eXIf", _exif(3))], "late"))
    a = read_image(p)
    assert image_size_of(p) == (a.shape[1], a.shape[0]) == (W, H)
    assert exif_orientation(p) == 3


# --------------------------------------------------------------------------------- hostile and damaged PNGs
def _hostile(length: int) -> bytes:
    cs = _chunks(_plain_png())
    return _png(cs[:-1]) + struct.pack(">I", length) + b"eXIf" + b"\x00" * 16


def test_a_late_eXIf_with_a_huge_length_reads_no_more_than_the_file(tmp_path):
    """A 91-byte PNG whose late eXIf says 256 MiB: ``_png_late_exif`` calls ``f.read(length)``, and CPython's
    buffered read allocates ``length`` bytes first — measured 256 MiB here, 4.3 GB for a length of 0xFFFFFFFF
    (under ``ulimit -v 3000000`` a MemoryError, which neither exif_orientation nor image_size_of catches)."""
    p = tmp_path / "h.png"
    p.write_bytes(_hostile(1 << 28))
    tracemalloc.start()
    try:
        exif_orientation(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    with pytest.raises(InputError):  # PIL: "Truncated File Read"
        read_image(p)
    with contextlib.suppress(InputError):  # a header size for a damaged file is image_size_of's promise
        assert image_size_of(p) == (W, H)


def _damaged(kind: str, path: Path) -> Path:
    bad = b"\x00" * 16  # no TIFF header: PIL's Exif.load raises SyntaxError("not a TIFF file")
    if kind == "WEBP":
        _pixels().save(path, "WEBP", exif=b"Exif\x00\x00" + bad)
    else:
        path.write_bytes(_with(_plain_png(), [(b"eXIf", bad)], kind))
    return path


@pytest.mark.parametrize("kind", ["early", "late", "WEBP"])
def test_a_damaged_exif_block_is_an_input_error_or_ignored_alike(tmp_path, kind):
    """A PNG (eXIf before or after the pixels) or WebP whose EXIF block is damaged: exif_orientation says None,
    but read_image and image_size_of raise PIL's bare ``SyntaxError: not a TIFF file`` — no InputError, so
    ``export --data`` stops with "error: SyntaxError: ..." naming neither the image nor the input line. Either
    both refuse it as an InputError or both read it as stored; this test takes either."""
    p = _damaged(kind, tmp_path / "d.img")
    assert exif_orientation(p) is None
    results = []
    for fn in (lambda: read_image(p).shape[1::-1], lambda: image_size_of(p)):
        try:
            results.append(tuple(fn()))
        except InputError:
            results.append("InputError")
    assert results[0] == results[1], results


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_odd_pngs_end_the_walk(tmp_path):
    """Checked (passes): a truncated PNG, a chunk length past the end, an empty eXIf, and garbage after IEND
    end the walk at once and say what read_image says."""
    plain = _plain_png()
    late = _with(plain, [(b"eXIf", _exif(6))], "late")
    cases = {"truncated in IDAT": plain[:60], "truncated late eXIf": late[:-30],
             "length past the end": _png(_chunks(plain)[:-1]) + struct.pack(">I", 1000) + b"tEXt" + b"x" * 8,
             "empty eXIf": _with(plain, [(b"eXIf", b"")], "late"),
             "garbage after IEND": plain + b"\x00\x00\x00\x04eXIf" + _exif(6)[:4]}
    for name, data in cases.items():
        p = tmp_path / "o.png"
        p.write_bytes(data)
        try:
            want = tuple(read_image(p).shape[1::-1])
        except InputError:
            want = None
        try:
            got = image_size_of(p)
        except InputError:
            got = None
        assert got in (want, (W, H)), name  # a header size for damaged pixel data is image_size_of's promise
        assert exif_orientation(p) is None, name


# ----------------------------------------------------------------------------------- the frame-unknown warning
def _frame_warnings(size, orientation, cam: dict | list, tmp_path: Path) -> list[str]:
    f = tmp_path / "cam.json"
    f.write_text(json.dumps(cam))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_intrinsics_json(f, size, exif_orientation=orientation)
    return [str(w.message) for w in caught if "EXIF orientation" in str(w.message)]


def test_the_frame_warning_is_said_where_the_frame_cannot_be_told_and_nowhere_else(tmp_path):
    """Checked (passes): no warning for orientation None or 1, nor for a 5-8 calibration stating the upright or
    the raw size of a non-square image; a warning for 2-4 (sized or not) and for a bare matrix of 5-8, with the
    raw-frame reading's numbers (EXIF 3 of a 640x480 frame: (300, 200) -> (340, 280); EXIF 6, upright 480x640:
    (300, 200) -> (280, 300), fx and fy swapped)."""
    K = [[500, 0, 300], [0, 520, 200], [0, 0, 1]]
    sized = {"fx": 500, "fy": 520, "cx": 300, "cy": 200, "width": 640, "height": 480}
    for orientation in (None, 1):
        assert not _frame_warnings((640, 480), orientation, K, tmp_path)
    for orientation in (5, 6, 7, 8):
        assert not _frame_warnings((480, 640), orientation, sized, tmp_path)  # the raw size: turned
        assert not _frame_warnings((640, 480), orientation, sized, tmp_path)  # the upright size: kept
    (w3,) = _frame_warnings((640, 480), 3, sized, tmp_path)
    assert "fx 500, fy 520, principal point (340, 280)" in w3
    (w6,) = _frame_warnings((480, 640), 6, K, tmp_path)
    assert "fx 520, fy 500, principal point (280, 300)" in w6


def test_a_sized_calibration_of_a_square_quarter_turned_photo_warns(tmp_path):
    """A 64x64 photo with EXIF 6 and a calibration stating width 64, height 64 (cx 21, cy 13): the raw and the
    upright sizes are the same, so — as for 2-4, where the size cannot tell either — the frame cannot be told; the
    K is kept as of the upright image without a word (the raw-frame reading would put the principal point at
    (51, 21), 31 px away). The bare matrix of the same photo warns."""
    img = tmp_path / "sq.png"
    sq = Image.new("RGB", (64, 64))
    exif = sq.getexif()
    exif[0x0112] = 6
    sq.save(img, exif=exif)
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps([[10 + 2 * (i % 5), 10 + 2 * i, 0.9] for i in range(17)]))
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps({"fx": 50, "fy": 52, "cx": 21, "cy": 13, "width": 64, "height": 64}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        K = sample_from_user(img, kp, intrinsics=cam).K
    turned = (float(K[0, 2]), float(K[1, 2])) == (51.0, 21.0)
    warned = any("EXIF orientation" in str(w.message) for w in caught)
    assert turned or warned
