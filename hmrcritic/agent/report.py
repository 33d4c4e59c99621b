"""A self-contained HTML report of one scored group: renders embedded as base64, scores per axis,
rationales, the evidence table, reflection notes and the recalled rules and prototypes.

One file, no external assets (it must open from an air-gapped machine or an e-mail attachment). Large
renders are embedded downscaled to :data:`MAX_EMBED_WIDTH` and as JPEG when that is smaller (a 64-hypothesis
group over a photo made a report of several MB with the PNGs embedded verbatim); the files on disk are never
changed. Everything that can come from a judge, the memory or the user is HTML-escaped, and a content security
policy keeps the page from running scripts or loading anything.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hmrcritic.agent.api import ScoredGroup, overall_scale_note
from hmrcritic.agent.schema import AXES, finite_float
from hmrcritic.agent.trace import revision_rounds_text
from hmrcritic.errors import keywords_checked
from hmrcritic.io import atomic_write_text

MAX_EMBED_WIDTH = 1600  # px: wider images are embedded downscaled (the page itself is at most 1400 px wide)
KEEP_BYTES = 200_000  # an image a browser shows and at most this large is embedded exactly as it is on disk
JPEG_QUALITY = 85
SHOWN = 30  # reflection issues / changes listed per round; the rest are counted

# no scripts, no network: only inline styles and data: images (defence in depth behind the escaping)
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
td.l,th.l{text-align:left}tr.best td{background:#eaf7ea}.muted{color:#777}
td.l,p,li{overflow-wrap:anywhere;word-break:break-word}td.l{min-width:16em;max-width:60em}
img{max-width:100%;height:auto;border:1px solid #ccc;margin:4px 0}
.bar{display:inline-block;height:8px;background:#4a7;vertical-align:middle}
.missing{color:#a40;border:1px dashed #d96;padding:6px 10px;display:inline-block}
code{background:#f4f4f4;padding:1px 4px}
"""


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"))


def _browser_mime(data: bytes) -> str | None:
    """The MIME type of an image a browser shows inline, from its first bytes (not its file name), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


class _Unavailable(Exception):
    """An image that cannot be embedded; the message says why (shown in the report instead of the image)."""


def _rgb(im):
    """``im`` as RGB; transparency is flattened onto white (the page background)."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grey: scale to 8 bits
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        a = a / hi * 255 if hi > 255 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def _encode(im, fmt: str) -> bytes | None:
    buf = io.BytesIO()
    try:
        if fmt == "JPEG":
            im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
        else:
            im.save(buf, format="PNG")
    except (OSError, ValueError):  # e.g. JPEG cannot hold an image taller than 65,535 px
        return None
    return buf.getvalue()


def _embeddable(path: Path) -> tuple[bytes, str, str]:
    """``(data, mime, note)`` to embed for the image at ``path``: small browser images as they are, others
    upright, at most :data:`MAX_EMBED_WIDTH` wide, as the smaller of JPEG and PNG. Raises
    :class:`_Unavailable` for a missing, unreadable or corrupt file."""
    from PIL import Image, ImageOps

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _Unavailable("file not found") from None
    except IsADirectoryError:
        raise _Unavailable("is a folder, not an image") from None
    except OSError as exc:
        raise _Unavailable(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # a NUL or a lone surrogate in a hand-edited scores.json's renders: no path the OS takes
        raise _Unavailable("not a usable file path") from None
    mime = _browser_mime(raw)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()  # decodes everything: a truncated or corrupt file fails here, not in the reader's browser
            if mime is not None and len(raw) <= KEEP_BYTES:
                return raw, mime, ""
            upright = ImageOps.exif_transpose(im)  # a browser would apply the EXIF orientation to the raw file
            rgb = _rgb(upright)
    except Image.DecompressionBombError:
        raise _Unavailable("too large to embed (over PIL's decompression-bomb pixel limit)") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError… for corrupt files
        raise _Unavailable(f"not a readable image (corrupt or unsupported format: {type(exc).__name__})") from None
    w, h = rgb.size
    shown = rgb
    if w > MAX_EMBED_WIDTH:
        shown = rgb.resize((MAX_EMBED_WIDTH, max(1, round(h * MAX_EMBED_WIDTH / w))), Image.Resampling.LANCZOS)
    candidates = []
    if shown is rgb and mime is not None:
        candidates.append((raw, mime))
    jpeg = _encode(shown, "JPEG")
    if jpeg is not None:
        candidates.append((jpeg, "image/jpeg"))
    # PNG-encoding a downscaled grid costs ~0.5 s: skip it where it cannot win — a JPEG original (a photo), or a
    # JPEG smaller than the PNG original scaled by pixel count (a downscaled render's PNG comes out 1.5-3×
    # larger than that, the resampling blending its flat colours)
    est_png = len(raw) * (shown.width * shown.height) / max(1, w * h) if mime == "image/png" else math.inf
    jpeg_wins = mime == "image/jpeg" or (jpeg is not None and len(jpeg) < est_png)
    if (shown is not rgb and not jpeg_wins) or mime is None or not candidates:
        png = _encode(shown, "PNG")
        if png is not None:
            candidates.append((png, "image/png"))
    if not candidates:
        raise _Unavailable("could not be encoded for the report")
    data, out_mime = min(candidates, key=lambda c: len(c[0]))
    # the whole path: the grids live in the run folder, not beside report.html (``critique --out`` holds only the
    # report and scores.json, a demo scene folder has grid.png but no side_grid.png), so a bare "side_grid.png"
    # sent the reader looking for a file that is not there
    where = path.absolute()
    if shown is not rgb:
        note = f"shown at {shown.width}×{shown.height} px; full size ({w}×{h}) in {where}"
    elif data is not raw:
        note = f"re-encoded for the report; original in {where}"
    else:
        note = ""
    return data, out_mime, note


def _img(path: str | None, alt: str) -> str:
    """A ``<figure>`` with the image at ``path`` embedded, or a note saying why it is missing; "" for no path."""
    if not path:
        return ""
    p = Path(path)
    try:
        data, mime, note = _embeddable(p)
    except _Unavailable as why:
        # the whole path, as in the note of a downscaled render: the grids are in the run folder, not beside the
        # report, so "overlay_grid.png: file not found" did not say where it was looked for (a pruned run folder?)
        return f'<p class="missing">{_e(alt)}: image missing — {_e(p.absolute())}: {_e(why)}</p>'
    b64 = base64.b64encode(data).decode("ascii")
    caption = _e(alt) + (f" · {_e(note)}" if note else "")
    return f'<figure><img alt="{_e(alt)}" src="data:{mime};base64,{b64}"><figcaption class="muted">' \
           f"{caption}</figcaption></figure>"


def _e(x: Any) -> str:
    """``x`` as HTML text (quotes escaped too, so it is safe in attributes); characters that UTF-8 cannot
    encode (lone surrogates from a JSON answer) become "?" instead of failing the write."""
    s = "" if x is None else str(x)
    return html.escape(s).encode("utf-8", "replace").decode("utf-8")


def _num(x: Any, fmt: str) -> str:
    """A number formatted with ``fmt``, or "—" for None, NaN, ±inf and anything that is not a number."""
    v = finite_float(x)
    return "—" if v is None else format(v, fmt)


def _bar_px(overall: Any) -> int:
    """Bar width for a 0-10 score: 10 px a point, clamped to 0..100 px (0 for a missing or non-finite score)."""
    return int(round(min(10.0, max(0.0, finite_float(overall, 0.0))) * 10))


def _order(result: ScoredGroup) -> list[int]:
    """Hypothesis indices to list, best first: the result's ranking (unknown or repeated indices skipped),
    then any scored hypothesis the ranking leaves out, by overall score."""
    by_index = {s.index: s for s in result.scores}
    seen: set[int] = set()
    order = []
    for i in result.ranking:
        if i in by_index and i not in seen:
            seen.add(i)
            order.append(i)
    rest = [s for s in result.scores if s.index not in seen]
    return order + [s.index for s in sorted(rest, key=lambda s: (-finite_float(s.overall, -math.inf), s.index))]


_RENDERS = {"overlay_grid": "overlays (index in each cell)", "side_grid": "overlays with side views"}


def _scored_group(result: Any) -> ScoredGroup:
    """``result`` as a :class:`ScoredGroup`: the object itself, the dict ``scores.json`` holds (read back with
    ``json.load``), or a :class:`~hmrcritic.agent.api.GroupResult` of ``critique_groups`` (its result; its error
    when it has none). Each of those failed as an AttributeError ('dict' object has no attribute 'scores')."""
    from pydantic import ValidationError

    from hmrcritic.agent.api import GroupResult
    from hmrcritic.errors import InputError

    if isinstance(result, ScoredGroup):
        return result
    if isinstance(result, GroupResult):
        if result.result is None:
            raise InputError(f"group {result.group_id} has no result to report: {result.error}")
        return result.result
    if isinstance(result, Mapping):
        try:
            return ScoredGroup.model_validate(dict(result))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "result"
            raise InputError(f"report: not a critique result (scores.json): {where} {err['msg'].lower()}") from None
    raise InputError(f"report: expected a ScoredGroup (critique_group's result), the dict of its scores.json or a "
                     f"GroupResult, got {type(result).__name__}")


def _items(value: Any) -> list:
    """A reflection's ``issues`` / ``changes`` as a list: a lone value is one item, None or "" none."""
    if isinstance(value, list | tuple):
        return list(value)
    return [] if value is None or (isinstance(value, str) and not value) else [value]


def memory_written_note(result: ScoredGroup) -> str:
    """One line on what a learning critique (``--learn``) wrote to the memory, "" when it wrote nothing.

    ``critique --learn`` printed the same table as a critique that learnt nothing, and the report did not say it
    either: the only trace was ``scores.json``'s ``memory_written`` and a changed memory version. Rule outcomes
    are counted only where true errors are given (exploration; ``true_errors_mm=`` in Python), so a CLI critique
    records none — said here, or the 0 reads as a failure. A finished critique returned again says its writes were
    made back then."""
    # read as the table reads a result: any object with the fields it shows (a stand-in without the newer ones)
    written = getattr(result, "memory_written", None)
    w = written if isinstance(written, Mapping) else {}
    protos, rules = (int(finite_float(w.get(k), 0.0)) for k in ("prototypes", "rules_recorded"))
    if not (protos or rules):
        return ""
    # a finished critique returned again carries the version of its first run (api._scored), not today's
    earlier = bool(getattr(result, "finished_earlier", False))
    version = "version {} then" if earlier else "now version {}"
    text = (f"learned: {protos} prototype(s) and {rules} rule outcome(s) written to the memory "
            f"({version.format(result.memory_version)})")
    if not rules:  # the CLI passes no true errors, not even for --scene: exploration (or Python) records them
        text += ("; rule outcomes need true errors: `hmrcritic explore` records them, or the Python API's "
                 "true_errors_mm=")
    if earlier:
        text += "; written when this group was first critiqued, not by this run"
    return text


def _image_arg(image_path: Any) -> str | None:
    """The input image argument as a path text: None or "" is no image (a sample without one passes its
    ``image_path``, None or ""); a leading ``~`` is the home, as for every file argument (README) — ``"~/photo.png"``
    was looked for in a folder named ``~`` and reported missing; anything but a path is an InputError (a bare
    TypeError from pathlib before)."""
    if image_path is None or (isinstance(image_path, str) and not image_path):
        return None
    from hmrcritic.config import path_text
    from hmrcritic.errors import InputError

    if isinstance(image_path, bytes) or not isinstance(image_path, str | os.PathLike):
        raise InputError(f"report: image_path must be a path (str or Path) or None, got {type(image_path).__name__}")
    return path_text(image_path, "report: image_path")


@keywords_checked
def render_html(result: ScoredGroup, image_path: str | None = None) -> str:
    """The report page as text (what :func:`write_report` writes). ``image_path``: the input image, shown beside
    the renders (None or "": none)."""
    result = _scored_group(result)
    image_path = _image_arg(image_path)
    by_index = {s.index: s for s in result.scores}
    rows = []
    for rank, i in enumerate(_order(result)):
        s = by_index[i]
        bar = f'<span class="bar" style="width:{_bar_px(s.overall)}px"></span>'
        rows.append(
            f'<tr class="{"best" if rank == 0 else ""}"><td>{rank + 1}</td><td>h{_e(i)}</td>'
            f"<td>{_num(s.overall, '.2f')} {bar}</td>" + "".join(f"<td>{_num(getattr(s, a), '.2f')}</td>"
                                                               for a in AXES)
            + f'<td class="l">{_e(s.rationale)}</td></tr>'
        )
    renders = [_img(result.renders.get(k), alt) for k, alt in _RENDERS.items()]
    renders += [_img(v, k.replace("_", " ")) for k, v in result.renders.items() if k not in _RENDERS]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>hmrcritic critique {_e(result.group_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Critique of group <code>{_e(result.group_id)}</code></h1>",
        f"<p>judge <b>{_e(result.judge)}</b>"
        + (f" (<code>{_e(result.judge_model)}</code>)" if result.judge_model else "")
        + f" · memory version <code>{_e(result.memory_version)}</code> · run "
        f"<code>{_e(result.run_id)}</code> · {len(result.scores)} hypotheses · "
        f"{revision_rounds_text(max(0, len(result.reflections) - 1))}</p>",
        f"<p>{_e(result.notes)}</p>" if result.notes else "",
        f"<p>{_e(learned)}</p>" if (learned := memory_written_note(result)) else "",
        "<h2>Renders</h2>",
        *renders,
        _img(image_path, "input image") if image_path else "",
        "" if result.renders else "<p class='muted'>rendering was off for this run</p>",
        "<h2>Ranking</h2><table><tr><th>rank</th><th>hyp</th><th>overall</th>"
        + "".join(f"<th>{a.replace('_', ' ')}</th>" for a in AXES) + "<th class='l'>rationale</th></tr>",
        *rows, "</table>", f"<p class='muted'>{_e(note)}</p>" if (note := overall_scale_note(result)) else "",
    ]
    if result.evidence:
        names = list(result.evidence)
        parts.append("<h2>Evidence</h2><table><tr><th>hyp</th>" + "".join(f"<th>{_e(n)}</th>" for n in names)
                     + "</tr>")
        for i in sorted(by_index):
            cells = []
            for k in names:
                values = result.evidence[k]
                cells.append(f"<td>{_num(values[i] if 0 <= i < len(values) else None, '.3g')}</td>")
            parts.append(f"<tr><td>h{_e(i)}</td>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Self-reflection</h2>")
    if not result.reflections:
        parts.append("<p class='muted'>no reflection recorded</p>")
    for r in result.reflections:
        # a number there (a hand-edited or foreign scores.json) failed as "TypeError: 'int' object is not iterable",
        # and a string was listed a character an issue
        issues, changes = (_items(r.get(k)) for k in ("issues", "changes"))
        parts.append(f"<p><b>round {_e(r.get('round'))}</b>: {_e(r.get('action'))} — {len(issues)} issue(s)"
                     f"</p><ul>")
        for issue in issues[:SHOWN]:
            issue = issue if isinstance(issue, dict) else {"detail": issue}
            parts.append(f"<li>[{_e(issue.get('kind'))}] {_e(issue.get('detail'))}</li>")
        if len(issues) > SHOWN:
            parts.append(f"<li class='muted'>… {len(issues) - SHOWN} more issue(s) not shown</li>")
        parts += [f"<li class='muted'>changed: {_e(c)}</li>" for c in changes[:SHOWN]]
        if len(changes) > SHOWN:
            parts.append(f"<li class='muted'>… {len(changes) - SHOWN} more change(s) not shown</li>")
        parts.append("</ul>")
    parts.append("<h2>Recalled rules</h2>")
    if result.rules_recalled:
        parts.append("<table><tr><th class='l'>id</th><th class='l'>rule</th><th>used</th><th>success</th>"
                     "<th>applied</th></tr>")
        for r in result.rules_recalled:
            applied = "yes" if r.get("rule_id") in result.rules_applied else ""
            parts.append(f"<tr><td class='l'><code>{_e(r.get('rule_id'))}</code></td><td class='l'>"
                         f"{_e(r.get('text'))}</td><td>{_e(r.get('n_used', 0))}</td>"
                         f"<td>{_e(r.get('n_success', 0))}</td><td>{applied}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='muted'>none (rule memory off or empty)</p>")
    parts.append("<h2>Recalled prototypes</h2>")
    if any(result.prototypes_recalled):
        parts.append("<table><tr><th>hyp</th><th class='l'>nearest past case</th><th>similarity</th>"
                     "<th>settled overall</th><th class='l'>rationale</th></tr>")
        for i, row in enumerate(result.prototypes_recalled):
            if row:
                p = row[0]
                parts.append(f"<tr><td>h{i}</td><td class='l'><code>{_e(p.get('source') or p.get('proto_id'))}"
                             f"</code></td><td>{_num(p.get('similarity'), '.3f')}</td>"
                             f"<td>{_num(p.get('overall'), '.2f')}</td>"
                             f"<td class='l'>{_e(p.get('rationale', ''))}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='muted'>none (prototype memory off or empty)</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


@keywords_checked
def write_report(result: ScoredGroup, out_dir: str | Path, image_path: str | None = None) -> Path:
    """Write ``<out_dir>/report.html`` and return its path; ``out_dir`` ending in ``.html`` (and not an existing
    folder) is the report file itself — ``write_report(r, "out/report.html")`` made a folder ``report.html`` with
    the report inside. ``result``: see :func:`_scored_group`; ``image_path``: the input image to show (None or "":
    none; a missing file is a note in the report, not an error). The path returned is ``out_dir``'s as given
    (relative stays relative). Arguments of the wrong type or name are one InputError line."""
    from hmrcritic.config import path_arg
    from hmrcritic.errors import InputError

    out = path_arg(out_dir, "write_report: out_dir")
    target = out if out.suffix.lower() in (".html", ".htm") and not out.is_dir() else out / "report.html"
    blocked = next((d for d in (target.parent, *target.parent.parents) if d.is_file()), None)
    if blocked is not None:  # a FileExistsError / NotADirectoryError from deep inside the atomic write
        raise InputError(f"report: {blocked} is a file, not a folder; give a folder for report.html")
    return atomic_write_text(target, render_html(result, image_path))
