"""Review s16 (VLM judge against real servers' quirks): scores written as fractions, hypotheses named by their
grid label, JSON after other JSON in prose, tool arguments as an object (llama.cpp), a 200 that carries an error
(OpenRouter), a 404/405 from a base URL without /v1 or one that redirects, error bodies that are text or HTML.
Against the local stub server (tests/openai_stub_server.py) with the real langchain-openai client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer, _completion, _user_text, good_critique  # noqa: E402
from test_vlm_judge import WORST, assert_valid, make_ctx, make_judge  # noqa: E402

from hmrcritic.agent.schema import AXES  # noqa: E402
from hmrcritic.agent.vlm import VLMJudge, extract_json, normalise_critique  # noqa: E402
from hmrcritic.config import JudgeSettings  # noqa: E402
from hmrcritic.errors import JudgeError  # noqa: E402


class _Raw:
    """A body that is not JSON (a proxy's HTML page, Ollama's plain-text 404)."""

    def __init__(self, data: bytes, ctype: str):
        self.data, self.ctype = data, ctype


class _Quirky(StubOpenAIServer):
    """The stub, answering as ``answer(rec, stub_answer)`` says: ``stub_answer()`` is the stub's own
    (status, headers, body), which also classifies the request (``rec.mode``); a body may be :class:`_Raw`."""

    def __init__(self, answer, **kw):
        super().__init__(**kw)
        self.answer_fn = answer

    def _answer(self, rec):
        return self.answer_fn(rec, lambda: StubOpenAIServer._answer(self, rec))

    def _handler_class(self):
        base = super()._handler_class()

        class Handler(base):
            def _send(self, status, headers, obj, trickle=False):
                if not isinstance(obj, _Raw):
                    return super()._send(status, headers, obj, trickle)
                self.send_response(status)
                self.send_header("Content-Type", obj.ctype)
                self.send_header("Content-Length", str(len(obj.data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(obj.data)

        return Handler


def _content(transform):
    """An answer whose text content is ``transform(good critique)`` (a str, or an object sent as JSON)."""

    def answer(rec, stub):
        status, headers, body = stub()
        if status != 200:
            return status, headers, body
        out = transform(good_critique(_user_text(rec.body)))
        return 200, {}, _completion("stub-vlm", content=out if isinstance(out, str) else json.dumps(out))

    return answer


def _worst_is_lowest(crit) -> None:
    assert_valid(crit)
    assert int(np.argmin([s.overall for s in crit.scores])) == WORST


# ------------------------------------------------------------------------------------------------ parsing


def test_scores_written_as_fractions_are_read_on_their_scale_and_words_are_refused():
    """`overall: "9/10"` was read as absent and replaced by the mean of the axes: with the axes all 5 the model's
    ranking became a five-way tie, silently. Fractions and percentages are read on their scale now; a word where
    a score belongs is refused (and retried with the reason) instead of guessed around; "N/A" is still absent."""
    overall = ["9/10", "8.5 / 10", "85/100", "2 out of 10", "70%"]
    data = {"scores": [{"index": i, **{a: 5 for a in AXES}, "overall": o} for i, o in enumerate(overall)]}
    crit = normalise_critique(data, 5)
    assert [s.overall for s in crit.scores] == pytest.approx([9.0, 8.5, 8.5, 2.0, 7.0])
    assert crit.scores[0].motion_structure == 5.0
    data["scores"][1]["overall"] = "N/A"  # no overall: the axes' mean, as before
    assert normalise_critique(data, 5).scores[1].overall == pytest.approx(5.0)
    data["scores"][1]["overall"] = "good"
    with pytest.raises(ValueError, match="score entry 1 has overall 'good'"):
        normalise_critique(data, 5)


@pytest.mark.parametrize("label", ["#{}", "h{}", "hyp {}", "h{1}"])
def test_hypotheses_named_by_their_grid_label_are_read(images, label):
    """The grids label the tiles "#0", "#1"..., and the reflection's feedback writes "h3": a model that names the
    hypotheses so was refused on every retry ("indices are missing or not integers") and the group failed. With
    the labels 1..N (`h{1}`: i + 1) the shift to 0-based still applies."""
    def name(i):
        return label.replace("{1}", str(i + 1)).format(i)

    def relabel(ans):
        for e in ans["scores"]:
            e["index"] = name(e["index"])
        return ans

    with _Quirky(_content(relabel)) as srv:
        _worst_is_lowest(make_judge(srv, max_retries=1).critique(make_ctx(images)))
    assert len(srv.requests) == 1


@pytest.mark.parametrize("before", ["Hypothesis [3] is clearly the worst; [0] and [1] look fine.\n",
                                    'I will answer in the format {"index": 0, "overall": 7.0}:\n'])
def test_the_answer_is_found_after_other_json_in_the_prose(images, before):
    """The first JSON value of the text was taken for the answer: a bracketed reference ("[3]") or the quoted
    format made every retry fail, although the answer followed in the same text."""
    with _Quirky(_content(lambda ans: before + "```json\n" + json.dumps(ans) + "\n```")) as srv:
        _worst_is_lowest(make_judge(srv, max_retries=1).critique(make_ctx(images)))
    assert len(srv.requests) == 1
    # alone, such a value is still what the text holds (and is then refused by the critique's checks)
    assert extract_json("see [3]") == [3]
    assert extract_json('[{"index": 0, "overall": 1}]') == [{"index": 0, "overall": 1}]


# ------------------------------------------------------------------------------------------------ HTTP


def test_tool_arguments_sent_as_an_object_are_read(images):
    """llama.cpp's server has sent ``function.arguments`` as a JSON object: the client refused the message on every
    retry of every group ("Input should be a valid string") and the judge never left function calling."""
    def answer(rec, stub):
        status, headers, body = stub()
        if status == 200 and rec.mode == "tools":
            function = body["choices"][0]["message"]["tool_calls"][0]["function"]
            function["arguments"] = json.loads(function["arguments"])
        return status, headers, body

    with _Quirky(answer, reject_response_format=True) as srv:
        judge = make_judge(srv, max_retries=1)
        _worst_is_lowest(judge.critique(make_ctx(images)))
    assert [(r.mode, r.status) for r in srv.requests] == [("json_schema", 400), ("tools", 200)]
    assert judge.mode == "function_calling"


def test_a_200_that_carries_an_error_is_that_error(images):
    """OpenRouter answers a provider's failure with 200 and ``{"error": {...}}``. Under json_schema (the first method
    tried) the client failed on it as "malformed answer (TypeError: 'NoneType' object is not iterable)": the
    server's words were lost, and an error that retrying cannot cure (402, no credits) was retried."""
    def fatal(rec, stub):
        stub()
        return 200, {}, {"error": {"message": "Insufficient credits", "code": 402}}

    with _Quirky(fatal) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=2).critique(make_ctx(images))
    assert "HTTP 402" in str(info.value) and "Insufficient credits" in str(info.value)
    assert len(srv.requests) == 1  # not retried

    def transient(rec, stub):
        stub()
        return 200, {}, {"error": {"message": "Provider returned error"}}

    with _Quirky(transient) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=1).critique(make_ctx(images))
    assert "server error" in str(info.value) and "Provider returned error" in str(info.value)
    assert len(srv.requests) == 2  # retried like a 502


@pytest.mark.parametrize("status,body,words", [
    (404, _Raw(b"404 page not found", "text/plain"), "404 page not found"),  # Ollama, path unknown
    (502, _Raw(b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body>"
               b"</html>", "text/html"), "502 Bad Gateway 502 Bad Gateway nginx"),
])
def test_an_error_body_that_is_text_or_html_is_shown(images, status, body, words):
    """A body that is not an OpenAI error object stays out of the client's message, which was a bare
    "Error code: 502": the text (without markup) is added."""
    with _Quirky(lambda rec, stub: (status, {}, body)) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=0).critique(make_ctx(images))
    assert words in str(info.value) and "<" not in str(info.value)


def test_a_404_names_the_address_and_a_redirect_says_so(images):
    """A base URL without /v1 (Ollama's http://host:11434) and one that redirects (the client follows a 301 with
    a GET) ended in a bare "HTTP 404"/"HTTP 405" naming no address."""
    with StubOpenAIServer() as srv:
        root = srv.base_url.removesuffix("/v1")
        judge = VLMJudge(JudgeSettings(base_url=root, model="stub-vlm", timeout_s=5.0, max_retries=0))
        with pytest.raises(JudgeError) as info:
            judge.critique(make_ctx(images))
    msg = str(info.value)
    assert f"at {root}/chat/completions (" in msg and "/v1" in msg and "HMRCRITIC_BASE_URL" in msg

    def moved(rec, stub):
        return 301, {"Location": "/v2/chat/completions"}, {}

    with _Quirky(moved) as srv, pytest.raises(JudgeError) as info:
        make_judge(srv, max_retries=0).critique(make_ctx(images))
    msg = str(info.value)
    assert f"{srv.base_url}/chat/completions redirected to" in msg and "/v2/chat/completions" in msg
    assert "HMRCRITIC_BASE_URL" in msg and "HTTP 404" in msg


def test_images_can_be_scaled_down_and_given_a_detail(tmp_path):
    """The grids went as rendered (N = 64 with side views: 1040 × 4160 px) to any VLM, a small local one that sees
    them at its own input size included, and a hosted one billing by tiles had no ``detail`` to lower.
    ``image_max_side`` scales the longer side down (aspect and format kept), ``image_detail`` is sent as is; the
    defaults send the files untouched, without ``detail``, and keep the judge's identity (and so the finished
    critiques made before) as it was."""
    import base64
    import io

    from PIL import Image

    from hmrcritic.agent.api import _judge_identity
    from hmrcritic.errors import InputError

    rng = np.random.default_rng(3)
    big = []
    for name, size in (("overlay.png", (300, 120)), ("side.png", (90, 200))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / name)
        big.append(str(tmp_path / name))

    def sent(srv):
        parts = [p for m in srv.requests[-1].body["messages"] if isinstance(m.get("content"), list)
                 for p in m["content"] if p.get("type") == "image_url"]
        sizes = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).size for p in parts]
        return sizes, [p["image_url"].get("detail") for p in parts]

    with StubOpenAIServer() as srv:
        small = VLMJudge(JudgeSettings(base_url=srv.base_url, model="stub-vlm", timeout_s=5.0, max_retries=2,
                                       image_max_side=64, image_detail="low"), backoff_base_s=0.01)
        assert_valid(small.critique(make_ctx(tuple(big))))
        assert sent(srv) == ([(64, 26), (29, 64)], ["low", "low"])
        assert_valid(make_judge(srv).critique(make_ctx(tuple(big))))
        assert sent(srv) == ([(300, 120), (90, 200)], [None, None])
        assert not srv.violations
    base = dict(base_url="http://127.0.0.1:9/v1", model="m")
    assert _judge_identity(JudgeSettings(**base)) == "m @ http://127.0.0.1:9/v1"
    assert _judge_identity(JudgeSettings(**base, image_max_side=512)) != _judge_identity(JudgeSettings(**base))
    for bad in ({"image_max_side": 10}, {"image_max_side": 100.5}, {"image_detail": "medium"}):
        with pytest.raises(InputError, match="image_"):
            JudgeSettings(**base, **bad)
