"""Session 36 mutation audit of hmrcritic/config.py and hmrcritic/agent/report.py (helper C).

Each test pins a behaviour a user depends on, worked out by hand from the docstrings, README and CONTRACTS, that a
mutant of the two modules survived with the existing tests. report.html: quotes escaped in attributes, the fallback
order of hypotheses the ranking leaves out, the best row, which recalled rules were applied, the nearest prototype,
8-bit grey kept as it is, a render exactly as wide as the cap left alone. Settings: (filled in below).
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from hmrcritic.agent.api import ScoredGroup
from hmrcritic.agent.report import KEEP_BYTES, MAX_EMBED_WIDTH, _img, render_html


def _group(overalls, ranking, **extra) -> ScoredGroup:
    """A scored group of len(overalls) hypotheses, axes all 5, rationale naming the hypothesis."""
    scores = [{"index": i, "motion_structure": 5.0, "physical_feasibility": 5.0, "image_alignment": 5.0,
               "overall": o, "rationale": f"why h{i}"} for i, o in enumerate(overalls)]
    return ScoredGroup.model_validate({"group_id": "g", "scores": scores, "ranking": ranking, **extra})


def _rows(html: str) -> list[tuple[str, list[str]]]:
    """The ranking table as (tr class, cell texts) rows."""
    start = html.index("<h2>Ranking</h2>")
    table = html[start: html.index("</table>", start)]
    return [(cls, re.findall(r"<td[^>]*>(.*?)</td>", body))
            for cls, body in re.findall(r'<tr class="([^"]*)">(.*?)</tr>', table)]


class _Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


# ------------------------------------------------------------------------------------------------- report.html
def test_a_render_name_with_a_quote_stays_inside_the_alt_attribute(tmp_path):
    """Render names come from scores.json (untrusted); the one beyond the two known grids is the image's alt text.
    A quote in it must not end the attribute and add one of its own (``_e``: quotes escaped too)."""
    png = tmp_path / "r.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(png)
    name = 'x" onload="steal'
    html = render_html(_group([5.0], [0], renders={name: str(png)}))
    (img,) = [a for t, a in _Tags(html).tags if t == "img"]
    assert set(img) == {"alt", "src"} and img["alt"] == name


def test_hypotheses_the_ranking_leaves_out_follow_best_overall_first():
    """_order: after the ranking, the scored hypotheses it leaves out, by overall score, best first (ties by index)."""
    res = _group([2.0, 9.0, 5.0, 9.0], [])
    assert [cells[1] for _, cells in _rows(render_html(res))] == ["h1", "h3", "h2", "h0"]


def test_only_the_first_row_is_marked_best():
    res = _group([1.0, 8.0, 4.0], [1, 2, 0])
    assert [(cls, cells[1]) for cls, cells in _rows(render_html(res))] == [("best", "h1"), ("", "h2"), ("", "h0")]


def test_a_recalled_rule_is_marked_applied_only_when_the_judge_applied_it():
    res = _group([5.0], [0], rules_recalled=[{"rule_id": "r-used", "text": "A"}, {"rule_id": "r-idle", "text": "B"}],
                 rules_applied=["r-used"])
    html = render_html(res)
    table = html[html.index("<h2>Recalled rules</h2>"):]
    table = table[: table.index("</table>")]
    applied = {re.search(r"<code>(.*?)</code>", r).group(1): re.findall(r"<td[^>]*>(.*?)</td>", r)[-1]
               for r in re.findall(r"<tr><td class='l'>(.*?)</tr>", table)}
    assert applied == {"r-used": "yes", "r-idle": ""}


def test_the_nearest_recalled_prototype_is_the_one_shown():
    """Prototype hits come nearest first (``prototype_hits``); the table shows "nearest past case" per hypothesis,
    numbered as the hypotheses are (h0 is the first row of prototypes_recalled)."""
    near = {"source": "near-case", "similarity": 0.9, "overall": 7.0, "rationale": "close"}
    far = {"source": "far-case", "similarity": 0.4, "overall": 2.0, "rationale": "distant"}
    html = render_html(_group([5.0, 6.0], [1, 0], prototypes_recalled=[[near, far], []]))
    section = html[html.index("<h2>Recalled prototypes</h2>"):]
    assert "<td>h0</td><td class='l'><code>near-case</code></td><td>0.900</td><td>7.00</td>" in section
    assert "far-case" not in section and "<td>h1</td>" not in section


def test_sixteen_bit_grey_already_in_the_8_bit_range_is_not_stretched(tmp_path):
    """_rgb scales 16-bit / float grey to 8 bits only when it goes past 255: a grey image of values 0..100 stored in
    16 bits is shown with those values (mean ~50), not stretched to 0..255 (mean ~127)."""
    path = tmp_path / "grey16.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 101, (700, 700)).astype(np.uint16)).save(path)
    assert path.stat().st_size > KEEP_BYTES  # so it is re-encoded, not embedded as it is
    m = re.search(r'src="data:image/[a-z]+;base64,([^"]+)"', _img(str(path), "grey"))
    with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as im:
        mean = float(np.asarray(im.convert("L"), np.float64).mean())
    assert 45 < mean < 55, mean


def test_a_render_exactly_as_wide_as_the_cap_is_not_called_downscaled(tmp_path):
    """Wider than MAX_EMBED_WIDTH is downscaled; one exactly that wide is shown at its own size, and the caption
    does not send the reader to a "full size" file that is the same size."""
    rng = np.random.default_rng(2)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (120, MAX_EMBED_WIDTH, 3)).astype(np.uint8)).save(path)
    assert path.stat().st_size > KEEP_BYTES
    html = _img(str(path), "grid")
    assert "shown at" not in html and "full size" not in html


def test_issues_given_as_a_tuple_are_each_an_issue():
    """_items: a list or a tuple of issues is that many issues (a lone value is one)."""
    res = _group([5.0], [0], reflections=[{"round": 0, "action": "accept", "issues": ("first", "second"),
                                           "changes": ("c1",)}])
    html = render_html(res)
    assert "2 issue(s)" in html and "<li>[] first</li>" in html and "<li>[] second</li>" in html
    assert "<li class='muted'>changed: c1</li>" in html


def test_an_upper_case_html_name_is_the_report_file_itself(tmp_path):
    """write_report: ``out_dir`` ending in .html or .htm (any case) and not a folder is the report file itself."""
    from hmrcritic.agent.report import write_report

    path = write_report(_group([5.0], [0]), tmp_path / "Critique.HTML")
    assert path == tmp_path / "Critique.HTML" and path.is_file()


@pytest.mark.parametrize(("written", "hint"), [({"prototypes": 2, "rules_recorded": 0}, True),
                                               ({"prototypes": 0, "rules_recorded": 3}, False),
                                               ({"prototypes": 1, "rules_recorded": 1}, False)])
def test_the_true_errors_hint_is_given_exactly_when_no_rule_outcome_was_recorded(written, hint):
    """memory_written_note: rule outcomes need true errors, so a learning critique that recorded none says how to
    get them; one that recorded some (whatever its prototypes) does not."""
    from hmrcritic.agent.report import memory_written_note

    note = memory_written_note(_group([5.0], [0], memory_written=written))
    assert note.startswith(f"learned: {written['prototypes']} prototype(s) and {written['rules_recorded']} rule")
    assert ("rule outcomes need true errors" in note) is hint


def test_evidence_rows_are_in_hypothesis_order_whatever_the_order_of_the_scores():
    """The evidence table lists h0, h1, … (each measure's list is indexed by hypothesis), also for a scores.json
    whose scores are not in index order."""
    res = _group([5.0, 6.0, 7.0], [2, 1, 0], evidence={"m": [0.5, 1.5, 2.5]})
    res.scores = [res.scores[2], res.scores[0], res.scores[1]]
    html = render_html(res)
    section = html[html.index("<h2>Evidence</h2>"):]
    assert re.findall(r"<tr><td>(h\d)</td><td>([^<]*)</td></tr>", section) == [("h0", "0.5"), ("h1", "1.5"),
                                                                              ("h2", "2.5")]


def test_a_wide_photo_small_on_disk_is_still_embedded_no_wider_than_the_cap(tmp_path):
    """Renders wider than MAX_EMBED_WIDTH are embedded at most that wide, even when the original file (a heavily
    compressed JPEG) is smaller than the downscaled re-encoding."""
    path = tmp_path / "photo.jpg"
    noise = np.random.default_rng(3).integers(0, 256, (1800, 2400, 3)).astype(np.uint8)
    Image.fromarray(noise).save(path, quality=5)
    assert path.stat().st_size > KEEP_BYTES
    m = re.search(r'src="data:image/[a-z]+;base64,([^"]+)"', _img(str(path), "photo"))
    with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as im:
        assert im.width == MAX_EMBED_WIDTH and im.height == round(1800 * MAX_EMBED_WIDTH / 2400)


def test_a_browser_image_of_exactly_keep_bytes_is_embedded_as_it_is_on_disk(tmp_path):
    """KEEP_BYTES: an image a browser shows and *at most* this large is embedded exactly as it is on disk."""
    from PIL import PngImagePlugin

    path = tmp_path / "exact.png"
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(path)
    base = path.stat().st_size
    # a tEXt chunk costs 12 bytes of framing plus its key, a NUL and its text: pad the file to exactly KEEP_BYTES
    info = PngImagePlugin.PngInfo()
    info.add_text("pad", "x" * (KEEP_BYTES - base - 12 - len("pad") - 1))
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(path, pnginfo=info)
    raw = path.read_bytes()
    assert len(raw) == KEEP_BYTES
    m = re.search(r'src="data:image/png;base64,([^"]+)"', _img(str(path), "exact"))
    assert m is not None and base64.b64decode(m.group(1)) == raw


# ----------------------------------------------------------------------------------------------------- settings
_SETTINGS = ("HMRCRITIC_API_KEY", "OPENAI_API_KEY", "HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE",
             "HMRCRITIC_VLM_TIMEOUT", "HMRCRITIC_VLM_RETRIES", "HMRCRITIC_VLM_CONCURRENCY", "HMRCRITIC_VLM_MAX_TOKENS",
             "HMRCRITIC_VLM_IMAGE_MAX_SIDE", "HMRCRITIC_VLM_IMAGE_DETAIL", "HMRCRITIC_VLM_MODEL", "HMRCRITIC_DEVICE",
             "HMRCRITIC_MEMORY", "HMRCRITIC_RUNS", "HMRCRITIC_DATA", "HMRCRITIC_CACHE", "HMRCRITIC_CHROMA_URL",
             "HMRCRITIC_DEBUG", "HMRCRITIC_LEARN")


@pytest.fixture()
def env(monkeypatch):
    """No judge, folder or flag variable set (HMRCRITIC_HOME stays: the suite's temporary home)."""
    for name in _SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), (" Yes\r", True), ("on", True),
                                            ("0", False), ("False", False), ("no", False), ("OFF", False)])
def test_env_flag_reads_yes_and_no_in_any_case(env, raw, value):
    """env_flag: 1/0, true/false, yes/no, on/off, whatever the default; read without padding and, as ``HMRCRITIC_DEBUG``
    is, in any case (a ``TRUE`` that was an error would be read differently by the two)."""
    from hmrcritic.config import env_flag

    env.setenv("HMRCRITIC_LEARN", raw)
    assert env_flag("HMRCRITIC_LEARN", not value) is value


@pytest.mark.parametrize(("raw", "on"), [("1", True), ("true", True), ("YES\r", True), ("0", False), ("nope", False),
                                         ("", False)])
def test_debug_is_on_for_every_yes_value_and_never_raises(env, raw, on):
    from hmrcritic.config import env_debug

    env.setenv("HMRCRITIC_DEBUG", raw)
    assert env_debug() is on


@pytest.mark.parametrize("value", ["localhost:8000", "chroma.internal:8000", "10.0.0.5:8000"])
def test_a_bare_host_and_port_as_the_memory_folder_is_refused(env, value):
    """not_an_address: ``host:port`` (no user part, no scheme) is a server address as Chroma takes it, not a folder."""
    from hmrcritic import config
    from hmrcritic.errors import InputError

    env.setenv("HMRCRITIC_MEMORY", value)
    with pytest.raises(InputError, match="is a server address, not a folder.*HMRCRITIC_CHROMA_URL"):
        config.memory_dir()


def test_each_folder_is_read_from_its_own_variable(env, tmp_path):
    from hmrcritic import config

    for name in ("HMRCRITIC_MEMORY", "HMRCRITIC_RUNS", "HMRCRITIC_DATA", "HMRCRITIC_CACHE"):
        env.setenv(name, str(tmp_path / name.lower()))
    assert config.memory_dir() == tmp_path / "hmrcritic_memory"
    assert config.runs_dir() == tmp_path / "hmrcritic_runs"
    assert config.data_dir() == tmp_path / "hmrcritic_data"
    assert config.cache_dir() == tmp_path / "hmrcritic_cache"


def test_a_relative_home_variable_falls_back_to_the_accounts_home(env, tmp_path):
    """_user_home: $HOME when absolute, else the account's home (a relative HOME put the home under the cwd)."""
    import os
    import pwd

    from hmrcritic import config

    env.delenv("HMRCRITIC_HOME")
    env.delenv("XDG_DATA_HOME", raising=False)
    env.setenv("HOME", "relative/home")
    expected = config.Path(pwd.getpwuid(os.getuid()).pw_dir) / ".local" / "share" / "hmrcritic"
    assert config.home_dir() == expected


def test_a_judge_base_url_with_a_query_string_is_refused():
    from hmrcritic.config import check_base_url
    from hmrcritic.errors import InputError

    with pytest.raises(InputError, match="query string"):
        check_base_url("http://localhost:8000/v1?api-version=1")
    assert check_base_url("http://localhost:8000/v1") == "http://localhost:8000/v1"


def test_langchains_openai_api_base_is_the_last_fallback_for_the_judge(env):
    """README: HMRCRITIC_BASE_URL, else OPENAI_BASE_URL, else langchain's OPENAI_API_BASE."""
    from hmrcritic.config import base_url_from_env

    env.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1")
    assert base_url_from_env() == ("http://127.0.0.1:9/v1", "OPENAI_API_BASE")
    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")
    assert base_url_from_env() == ("http://127.0.0.1:8/v1", "OPENAI_BASE_URL")


def test_judge_defaults_are_the_documented_ones(env):
    """README: timeout 60 s, retries 4, concurrency 4, max tokens and image size: the endpoint's / as rendered."""
    from hmrcritic.config import JudgeSettings

    s = JudgeSettings()
    assert (s.timeout_s, s.max_retries, s.max_concurrency, s.max_tokens, s.image_max_side, s.image_detail,
            s.model) == (60.0, 4, 4, None, None, None, "gpt-4o-mini")


@pytest.mark.parametrize(("kwargs", "ok"), [({"timeout_s": 0.0}, False), ({"timeout_s": 1e-3}, True),
                                            ({"image_max_side": 63}, False), ({"image_max_side": 64}, True),
                                            ({"max_concurrency": 0}, False), ({"max_concurrency": 1}, True),
                                            ({"max_retries": -1}, False), ({"max_retries": 0}, True)])
def test_judge_settings_given_in_code_are_held_to_the_variables_bounds(env, kwargs, ok):
    """Timeout > 0, image side ≥ 64 px, concurrency ≥ 1, retries ≥ 0 (the bounds of the variables, README)."""
    from hmrcritic.config import JudgeSettings
    from hmrcritic.errors import InputError

    if ok:
        JudgeSettings(**kwargs)
    else:
        with pytest.raises(InputError):
            JudgeSettings(**kwargs)


def test_public_settings_say_whether_a_key_is_set(env):
    from hmrcritic.config import JudgeSettings

    assert JudgeSettings().public()["api_key"] == "not set"
    env.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    assert JudgeSettings().public()["api_key"] == "set"


def test_the_default_device_is_cpu(env):
    from hmrcritic.config import check_device, default_device

    assert default_device() == "cpu" and check_device() == "cpu"


def test_a_cuda_index_past_the_last_device_is_refused(env, monkeypatch):
    """cuda:N on a machine with N devices (cuda:0..cuda:N-1) is refused naming how many there are."""
    import torch

    from hmrcritic.config import check_device
    from hmrcritic.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with pytest.raises(InputError, match="has 2 CUDA device"):
        check_device("cuda:2")


def test_a_padded_chroma_url_is_used_without_its_padding(env):
    from hmrcritic.config import env_chroma_url

    env.setenv("HMRCRITIC_CHROMA_URL", " http://127.0.0.1:8000\r\n")
    assert env_chroma_url() == "http://127.0.0.1:8000"
    env.setenv("HMRCRITIC_CHROMA_URL", " ")
    assert env_chroma_url() is None
