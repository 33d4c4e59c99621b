"""The self-contained HTML report (``hmrcritic critique --out``): size of the embedded renders, escaping,
missing or corrupt render files, odd scores and the ranking — on a real rendered critique."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from hmrcritic.agent.report import KEEP_BYTES, MAX_EMBED_WIDTH, _img, render_html, write_report

N = 8


pytestmark = pytest.mark.usefixtures("small_prior")


def photo(path: Path, w: int, h: int, seed: int = 0) -> Path:
    """A photo-like image (smooth colour plus sensor noise): PNG compresses it poorly, as it does a real photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), 128 + 60 * np.sin((x + y) / 51.0)],
                    -1)
    img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One real critique with rendering (N=8 over a 512×512 photo-like image) and the starter rule memory."""
    from test_agent_graph import make_scene

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.groups import perturb_group
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.memory.store import MemoryStore

    d = tmp_path_factory.mktemp("report")
    image = photo(d / "person.png", 512, 512)
    sample = make_scene(3, "report-scene")
    sample.image_path = str(image)
    hyps = perturb_group(sample, N, np.random.default_rng(3))
    memory = MemoryStore(path=d / "memory")
    memory.reset(seed_starter=True)
    res = critique_group(sample, hyps, memory=memory, config=AgentConfig(render=True),
                         checkpointer=open_checkpointer(d / "ckpt.sqlite"), run_dir=d / "run")
    return SimpleNamespace(result=res, image=str(image), dir=d)


def fresh(scored):
    """A deep copy of the real result to alter (the module's result stays as the critique returned it)."""
    return scored.result.model_copy(deep=True)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def embedded(html: str) -> list[tuple[str, bytes]]:
    return [(m, base64.b64decode(d)) for m, d in re.findall(r'src="data:([a-z/]+);base64,([^"]+)"', html)]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- image size
def test_large_render_is_embedded_downscaled_as_jpeg_and_the_file_is_untouched(tmp_path):
    big = photo(tmp_path / "grid.png", 2400, 900)
    before = sha(big)
    raw = big.read_bytes()
    assert len(raw) > KEEP_BYTES
    html = _img(str(big), "overlays")
    ((mime, data),) = embedded(html)
    assert mime == "image/jpeg" and data.startswith(b"\xff\xd8\xff")
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (MAX_EMBED_WIDTH, round(900 * MAX_EMBED_WIDTH / 2400))
    assert len(data) < len(raw) / 3
    assert "2400×900" in html and "grid.png" in html  # the caption says where the full-size file is
    assert sha(big) == before  # the PNG on disk is never rewritten


def test_small_image_is_embedded_exactly_as_it_is(tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((120, 300, 3), 200, np.uint8)).save(small)
    ((mime, data),) = embedded(_img(str(small), "x"))
    assert mime == "image/png" and data == small.read_bytes()


def test_large_image_stays_png_when_png_is_the_smaller(tmp_path):
    """Hard black/white detail: PNG beats JPEG, so the re-encoding keeps PNG (JPEG only when it is smaller)."""
    sharp = tmp_path / "sharp.png"
    bits = np.random.default_rng(1).random((1200, 1500)) > 0.5
    Image.fromarray(np.repeat(bits[..., None] * 255, 3, -1).astype(np.uint8)).save(sharp)
    assert sharp.stat().st_size > KEEP_BYTES
    ((mime, data),) = embedded(_img(str(sharp), "x"))
    assert mime == "image/png" and data == sharp.read_bytes()


def test_real_report_is_much_smaller_than_the_renders_and_renders_are_untouched(scored, tmp_path):
    res = scored.result
    files = [res.renders["overlay_grid"], res.renders["side_grid"], scored.image]
    hashes = [sha(f) for f in files]
    on_disk = sum(Path(f).stat().st_size for f in files)
    path = write_report(res, tmp_path, image_path=scored.image)
    html = path.read_text(encoding="utf-8")
    images = embedded(html)
    assert len(images) == 3 and all(m in ("image/png", "image/jpeg") for m, _ in images)
    for _, data in images:
        with Image.open(io.BytesIO(data)) as im:
            assert im.width <= MAX_EMBED_WIDTH
    assert path.stat().st_size < on_disk / 2, (path.stat().st_size, on_disk)
    assert [sha(f) for f in files] == hashes


# ------------------------------------------------------------------------------------- missing / corrupt
def test_missing_unreadable_and_corrupt_renders_still_give_a_report(scored, tmp_path):
    res = fresh(scored)
    good = Path(res.renders["overlay_grid"]).read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])  # a PNG cut short (a torn copy)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "a_folder.png").mkdir()
    res.renders = {"overlay_grid": str(tmp_path / "gone.png"), "side_grid": str(tmp_path / "truncated.png"),
                   "extra": str(tmp_path / "a_folder.png")}
    path = write_report(res, tmp_path / "out", image_path=str(tmp_path / "garbage.png"))
    html = path.read_text(encoding="utf-8")
    assert embedded(html) == []
    missing = re.findall(r'<p class="missing">(.*?)</p>', html)
    assert len(missing) == 4, missing
    assert "gone.png: file not found" in missing[0] and "truncated.png: not a readable image" in missing[1]
    assert "a_folder.png: is a folder" in missing[2] and "garbage.png: not a readable image" in missing[3]
    assert "<h2>Ranking</h2>" in html and html.count("<tr class=") == N  # the rest of the report is all there


# ------------------------------------------------------------------------------------------------ escaping
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_text_from_judge_memory_and_user_is_escaped(scored):
    res = fresh(scored)
    res.group_id = HOSTILE
    res.judge = res.memory_version = res.run_id = res.notes = HOSTILE
    res.scores[0].rationale = HOSTILE
    res.evidence = {HOSTILE: [1.0] * N}
    res.reflections = [{"round": HOSTILE, "action": HOSTILE, "issues": [{"kind": HOSTILE, "detail": HOSTILE}],
                        "changes": [HOSTILE]}]
    res.rules_recalled = [{"rule_id": HOSTILE, "text": HOSTILE, "n_used": HOSTILE, "n_success": HOSTILE}]
    res.prototypes_recalled = [[{"source": HOSTILE, "similarity": 0.9, "overall": 5.0, "rationale": HOSTILE}]]
    html = render_html(res)
    page = Tags(html)
    assert not [t for t, _ in page.tags if t == "script"]
    assert not [a for _, a in page.tags if "onerror" in a]
    assert all(a["src"].startswith("data:image/") for t, a in page.tags if t == "img")
    text = "".join(page.text)
    # every place shows the hostile string as text: title, h1, header (judge, memory, run), notes, rationale,
    # evidence header, reflection (round, action, kind, detail, change), rule (id, text, used, success),
    # prototype (source, rationale)
    assert text.count(HOSTILE) == 19, text.count(HOSTILE)


def test_report_loads_nothing_and_runs_nothing(scored, tmp_path):
    html = write_report(scored.result, tmp_path, image_path=scored.image).read_text(encoding="utf-8")
    page = Tags(html)
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    srcs = [a.get("src") or a.get("href") for _, a in page.tags if "src" in a or "href" in a]
    assert srcs and all(s.startswith("data:image/") for s in srcs)


def test_text_utf8_cannot_encode_does_not_fail_the_write(scored, tmp_path):
    """A lone surrogate (json.loads accepts "\\ud800" in a judge's answer) used to raise UnicodeEncodeError."""
    res = fresh(scored)
    res.scores[0].rationale = "knee \ud800 bent"
    res.notes = "summary \udfff"
    html = write_report(res, tmp_path).read_bytes().decode("utf-8")
    assert "knee ? bent" in html and "summary ?" in html


def test_very_long_rationale_is_shown_whole_and_wraps(scored):
    res = fresh(scored)
    res.scores[0].rationale = "x" * 5000  # one unbroken word (a URL, a hash) would stretch the table
    html = render_html(res)
    assert "x" * 5000 in html
    css = html[html.index("<style>"): html.index("</style>")]
    assert re.search(r"td\.l[^{]*\{[^}]*overflow-wrap:anywhere", css)


# ---------------------------------------------------------------------------------------- scores / ranking
def rows(html: str) -> list[list[str]]:
    table = html[html.index("<h2>Ranking</h2>"): html.index("</table>", html.index("<h2>Ranking</h2>"))]
    return [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr class=[^>]*>(.*?)</tr>", table)]


def test_ranking_table_follows_the_ranking_best_first(scored):
    res = scored.result
    table = rows(render_html(res))
    assert [r[1] for r in table] == [f"h{i}" for i in res.ranking]
    assert [r[0] for r in table] == [str(k + 1) for k in range(N)]
    overall = [float(r[2].split()[0]) for r in table]
    assert overall == sorted(overall, reverse=True)
    assert render_html(res).count('<tr class="best">') == 1


def test_ranking_that_misses_or_invents_hypotheses_lists_each_one_once(scored):
    res = fresh(scored)
    res.ranking = [res.ranking[0], 99, res.ranking[0]]  # unknown and repeated indices, the rest left out
    table = rows(render_html(res))
    shown = [r[1] for r in table]
    assert sorted(shown) == sorted(f"h{i}" for i in range(N)) and shown[0] == f"h{scored.result.ranking[0]}"


def test_scores_outside_0_10_or_not_finite_give_a_clamped_bar_and_a_dash(scored):
    """Scores are validated on construction but not on assignment (the builtin judge assigns them in place)."""
    res = fresh(scored)
    by_index = {s.index: s for s in res.scores}
    by_index[0].overall, by_index[1].overall, by_index[2].overall = 12.5, -3.0, float("nan")
    by_index[3].motion_structure = float("inf")
    html = render_html(res)
    widths = {f"h{i}": int(w) for i, w in re.findall(r"<td>h(\d+)</td><td>[^<]*<span class=\"bar\" "
                                                     r"style=\"width:(-?\d+)px\"", html)}
    assert widths["h0"] == 100 and widths["h1"] == 0 and widths["h2"] == 0
    assert all(0 <= w <= 100 for w in widths.values())
    cells = {r[1]: r for r in rows(html)}
    assert cells["h2"][2].startswith("—") and cells["h3"][3] == "—"


def test_long_reflection_lists_say_how_many_are_not_shown(scored):
    res = fresh(scored)
    res.reflections = [{"round": 0, "action": "revise", "changes": [f"h{i % N} overall 1→2" for i in range(41)],
                        "issues": [{"kind": "contradiction", "detail": f"issue {i}"} for i in range(45)]}]
    html = render_html(res)
    assert "45 issue(s)" in html and "issue 29<" in html and "issue 30<" not in html
    assert "15 more issue(s) not shown" in html and "11 more change(s) not shown" in html


def test_report_says_revision_rounds_in_the_right_number(scored):
    """report.html said "1 revision round(s)" — a template left unfilled (session 35: trace and critique too)."""
    res = fresh(scored)
    first = list(res.reflections[:1]) or [{}]
    for n, words in ((1, "1 revision round<"), (2, "2 revision rounds<")):
        res.reflections = first * (n + 1)
        text = render_html(res)
        assert words in text and "round(s)" not in text
