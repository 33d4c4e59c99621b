"""A self-contained HTML report of one scored group: renders embedded as base64, scores per axis,
rationales, the evidence table, reflection notes and the recalled rules and prototypes.

One file, no external assets (it must open from an air-gapped machine or an e-mail attachment).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.schema import AXES
from hmrcritic.io import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
td.l,th.l{text-align:left}tr.best td{background:#eaf7ea}.muted{color:#777}
img{max-width:100%;border:1px solid #ccc;margin:4px 0}
.bar{display:inline-block;height:8px;background:#4a7;vertical-align:middle}
code{background:#f4f4f4;padding:1px 4px}
"""


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
          (b"BM", "image/bmp"))


def _browser_mime(data: bytes) -> str | None:
    """The MIME type of an image a browser shows inline, from its first bytes (not its file name), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def _img(path: str | None, alt: str) -> str:
    if not path or not Path(path).exists():
        return ""
    raw = Path(path).read_bytes()
    mime = _browser_mime(raw)
    if mime is None:  # a format browsers do not show (TIFF, …): embed it re-encoded as PNG
        import io

        from PIL import Image

        buf = io.BytesIO()
        with Image.open(io.BytesIO(raw)) as im:
            im.convert("RGB").save(buf, format="PNG")
        raw, mime = buf.getvalue(), "image/png"
    data = base64.b64encode(raw).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"><figcaption class="muted">' \
           f"{html.escape(alt)}</figcaption></figure>"


def _e(x) -> str:
    return html.escape(str(x))


def render_html(result: ScoredGroup, image_path: str | None = None) -> str:
    rows = []
    by_index = {s.index: s for s in result.scores}
    for rank, i in enumerate(result.ranking):
        s = by_index[i]
        bar = f'<span class="bar" style="width:{int(s.overall * 10)}px"></span>'
        rows.append(
            f'<tr class="{"best" if rank == 0 else ""}"><td>{rank + 1}</td><td>h{i}</td>'
            f"<td>{s.overall:.2f} {bar}</td>" + "".join(f"<td>{getattr(s, a):.2f}</td>" for a in AXES)
            + f'<td class="l">{_e(s.rationale)}</td></tr>'
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hmrcritic critique {_e(result.group_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Critique of group <code>{_e(result.group_id)}</code></h1>",
        f"<p>judge <b>{_e(result.judge)}</b> · memory version <code>{_e(result.memory_version)}</code> · run "
        f"<code>{_e(result.run_id)}</code> · {len(result.scores)} hypotheses · "
        f"{max(0, len(result.reflections) - 1)} revision round(s)</p>",
        f"<p>{_e(result.notes)}</p>",
        "<h2>Renders</h2>",
        _img(result.renders.get("overlay_grid"), "overlays (index in each cell)"),
        _img(result.renders.get("side_grid"), "overlays with side views"),
        _img(image_path, "input image") if image_path else "",
        "" if result.renders else "<p class='muted'>rendering was off for this run</p>",
        "<h2>Ranking</h2><table><tr><th>rank</th><th>hyp</th><th>overall</th>"
        + "".join(f"<th>{a.replace('_', ' ')}</th>" for a in AXES) + "<th class='l'>rationale</th></tr>",
        *rows, "</table>",
    ]
    if result.evidence:
        names = list(result.evidence)
        parts.append("<h2>Evidence</h2><table><tr><th>hyp</th>" + "".join(f"<th>{_e(n)}</th>" for n in names)
                     + "</tr>")
        n = len(result.scores)
        for i in range(n):
            parts.append(f"<tr><td>h{i}</td>" + "".join(f"<td>{result.evidence[k][i]:.3g}</td>" for k in names)
                         + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Self-reflection</h2>")
    if not result.reflections:
        parts.append("<p class='muted'>no reflection recorded</p>")
    for r in result.reflections:
        issues = r.get("issues", [])
        parts.append(f"<p><b>round {r.get('round')}</b>: {_e(r.get('action'))} — {len(issues)} issue(s)</p><ul>")
        parts += [f"<li>[{_e(i.get('kind'))}] {_e(i.get('detail'))}</li>" for i in issues[:30]]
        parts += [f"<li class='muted'>changed: {_e(c)}</li>" for c in r.get("changes", [])[:30]]
        parts.append("</ul>")
    parts.append("<h2>Recalled rules</h2>")
    if result.rules_recalled:
        parts.append("<table><tr><th class='l'>id</th><th class='l'>rule</th><th>used</th><th>success</th>"
                     "<th>applied</th></tr>")
        for r in result.rules_recalled:
            applied = "yes" if r.get("rule_id") in result.rules_applied else ""
            parts.append(f"<tr><td class='l'><code>{_e(r.get('rule_id'))}</code></td><td class='l'>"
                         f"{_e(r.get('text'))}</td><td>{r.get('n_used', 0)}</td><td>{r.get('n_success', 0)}</td>"
                         f"<td>{applied}</td></tr>")
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
                             f"</code></td><td>{p.get('similarity', 0):.3f}</td><td>{p.get('overall', 0):.2f}</td>"
                             f"<td class='l'>{_e(p.get('rationale', ''))}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='muted'>none (prototype memory off or empty)</p>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def write_report(result: ScoredGroup, out_dir: str | Path, image_path: str | None = None) -> Path:
    return atomic_write_text(Path(out_dir) / "report.html", render_html(result, image_path))
