"""Review s29 (hints): three messages that still left the user without what to change.

* The VLM judge with no base URL set that cannot connect said "cannot connect to the default OpenAI endpoint
  ([Errno ...])" and nothing more: now it says no base URL is set and that HMRCRITIC_BASE_URL is for a local server.
  With langchain's ``OPENAI_API_BASE`` set, the openai client called that address, and the message still named
  "the default OpenAI endpoint": it names the address called and the variable it came from.
* The judge's advice came after the address (a refused connection, a 404), and the line is cut at 300
  characters: behind a long base URL the cut took the advice. The address (or the server's words) is cut now.
* ``body convert`` of a truncated or not-a-zip .npz said what the layout should be ("expected ..."), as if the
  file were of another layout: it says the file is damaged or no .npz.
"""

from __future__ import annotations

import http.server
import pickle
import socket
import threading

import httpx
import numpy as np
import openai
import pytest
from test_vlm_judge import make_ctx

from hmrcritic.agent.vlm import EndpointUnusableError, VLMJudge
from hmrcritic.config import JudgeSettings
from hmrcritic.errors import AssetError
from hmrcritic.hmr import body as B

KEY = "sk-s29-hints-SECRET-41c9"


# ----------------------------------------------------------------------------------- the VLM judge, no base URL


@pytest.fixture
def refused_port():
    """A port on 127.0.0.1 bound and never listening: a connection to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _unusable(judge: VLMJudge) -> EndpointUnusableError:
    with pytest.raises(EndpointUnusableError) as info:
        judge.critique(make_ctx((None, None)))
    return info.value


def test_langchains_openai_api_base_is_a_base_url_variable_and_the_gateway_is_not_followed(monkeypatch, refused_port):
    """No HMRCRITIC_BASE_URL or OPENAI_BASE_URL, but langchain's OPENAI_API_BASE (old tutorials' variable) set:
    ChatOpenAI, given no base URL, called that address on its own while the judge's identity (memories, datasets,
    messages) said "the OpenAI API", and with LANGSMITH_GATEWAY set it sent the OpenAI key to LangSmith's gateway.
    OPENAI_API_BASE is now the last of the base URL variables, and with none set the client is given OpenAI's
    address by name."""
    url = f"http://127.0.0.1:{refused_port}/v1"
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_BASE", url)
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    judge = VLMJudge(JudgeSettings(model="stub-vlm"))
    assert judge.settings.base_url == url and judge.settings.describe() == f"stub-vlm @ {url}"
    err = _unusable(judge)
    message = str(err)
    assert f"cannot connect to {url}" in message and "refused" in message.lower()
    assert "is a server running there? Else correct the address (OPENAI_API_BASE)" in message
    assert err.endpoint == url and err.cause == "nothing answers there"
    assert KEY not in message

    monkeypatch.delenv("OPENAI_API_BASE")
    monkeypatch.setenv("LANGSMITH_GATEWAY", "true")
    judge = VLMJudge(JudgeSettings(model="stub-vlm"))
    assert judge.settings.base_url is None and judge.settings.describe() == "stub-vlm @ the OpenAI API"
    assert str(judge._llm.root_client.base_url) == "https://api.openai.com/v1/"  # not the gateway's


def _connection_error(port: int) -> openai.APIConnectionError:
    """The exception the openai client raises for a refused connection, made by a real client and socket."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIConnectionError) as info:
        client.models.list()
    return info.value


def test_no_base_url_the_openai_api_unreachable_says_what_to_change(monkeypatch, refused_port):
    """The judge on OpenAI's default endpoint (no base URL anywhere), on a machine that cannot reach it. No honest
    local test reaches api.openai.com and fails (only a proxy or resolver trick would): the judge's message is
    built from real exceptions of the kinds the client raises, a refused connection made by a real client and
    socket, and httpx's ConnectError for a name that does not resolve."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    judge = VLMJudge(JudgeSettings(model="gpt-4o-mini"))
    assert judge.settings.base_url is None and str(judge._llm.root_client.base_url) == "https://api.openai.com/v1/"
    refused = _connection_error(refused_port)
    unresolved = openai.APIConnectionError(request=httpx.Request("POST", "https://api.openai.com/v1/chat/completions"))
    unresolved.__cause__ = httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
    for exc, words in ((refused, "refused"), (unresolved, "name resolution")):
        reason, advice, unusable = judge._unreachable(exc)
        message = judge._scrub(f"VLM judge failed for group g0 after 4 attempts: {reason}", advice)
        assert message.startswith("VLM judge failed for group g0 after 4 attempts: cannot connect to the OpenAI API")
        assert words in message.lower() and unusable == "nothing answers there"
        assert message.endswith(": no base URL is set, so the judge called OpenAI's API (is this machine online?); "
                                "for a local server (vLLM, Ollama) set HMRCRITIC_BASE_URL")
        assert KEY not in message
    assert judge._address() == "the OpenAI API"


def test_check_endpoint_of_a_refused_address_says_where_and_what_to_change(monkeypatch, refused_port):
    """``check_endpoint`` (the endpoint probe) said only the client's "APIConnectionError: Connection error."."""
    url = f"http://127.0.0.1:{refused_port}/v1"
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
    checked = VLMJudge(JudgeSettings(model="stub-vlm")).check_endpoint()
    assert not checked["ok"] and checked["models"] == []
    said = checked["error"]
    assert said.startswith(f"cannot connect to {url} (") and "refused" in said.lower(), said
    assert said.endswith("): is a server running there? Else correct the address "
                         "(--base-url or HMRCRITIC_BASE_URL)"), said


# ----------------------------------------------------------------------------------- long addresses, cut advice


LONG = "/" + "/".join(["gateway-route-segment"] * 12) + "/v1"  # a 265-character path, e.g. a gateway's


def test_a_refused_long_base_url_keeps_the_advice(monkeypatch, refused_port):
    """The advice (which setting holds the address) came after the address and was cut at 300 characters."""
    url = f"http://127.0.0.1:{refused_port}{LONG}"
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    message = str(_unusable(VLMJudge(JudgeSettings(model="stub-vlm"))))
    assert len(message) <= 300
    assert message.endswith(": is a server running there? Else correct the address (--base-url or HMRCRITIC_BASE_URL)")
    assert f"cannot connect to http://127.0.0.1:{refused_port}/gateway-route-segment/" in message
    assert "route-segment/v1 ([Errno 111] Connection refused)" in message  # its middle left out, not the words


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Ollama's answer at an address without /v1: a plain-text 404 to everything."""

    def do_POST(self):  # noqa: N802 - the handler's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"404 page not found"
        self.send_response(404)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_404_behind_a_long_base_url_keeps_the_advice(monkeypatch):
    """The /v1 advice came between the URL asked and the server's words: behind a long URL the cut took it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}{LONG}"
        monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
        err = _unusable(VLMJudge(JudgeSettings(base_url=url, model="stub-vlm", max_retries=0)))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    message = str(err)
    assert len(message) <= 300 and err.cause == "not found there"
    assert ("/chat/completions (OpenAI-compatible servers answer under /v1, e.g. http://localhost:11434/v1 for "
            "Ollama: check HMRCRITIC_BASE_URL, and the model name): HTTP 404") in message
    assert f"at {url[:60]}" in message


# ----------------------------------------------------------------------------------- damaged body model files


@pytest.fixture(scope="module")
def model_npz(tmp_path_factory):
    """The mannequin's arrays saved as an .npz (the layout ``body convert`` and the loader take)."""
    from hmrcritic.hmr import mannequin

    mannequin.ensure_mannequin()
    with open(mannequin.default_folder() / mannequin.FILE_NAME, "rb") as fh:
        raw = pickle.load(fh)
    path = tmp_path_factory.mktemp("s29body") / "model.npz"
    arrays = {k: np.asarray(v) for k, v in raw.items() if k in B.REQUIRED_LAYOUT}
    np.savez(path, **arrays, vertex_ids=np.array([raw["vertex_ids"][k] for k in B.EXTRA_NAMES]))
    return path


def _said(path, tmp_path, capsys) -> tuple[str, str]:
    """What ``hmrcritic body convert`` and loading the file as the body model say of ``path``."""
    from hmrcritic.cli import main

    out = tmp_path / "converted.pkl"
    rc = main(["body", "convert", str(path), str(out)])
    convert = " ".join(capsys.readouterr().err.split())
    assert rc != 0 and not out.exists(), convert
    with pytest.raises(AssetError) as info:
        B.load_body_model(path)
    return convert, str(info.value)


def test_damaged_body_model_files_say_they_are_damaged(model_npz, tmp_path, capsys):
    """A truncated .npz, one with a damaged member, a file named .npz that is no zip, and a truncated pickle: each
    is named for what it is, without the layout text ("expected ...") that read as if the file were of another
    layout (and, for ``body convert``, asked for the official .pkl it was given)."""
    whole = model_npz.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole[: len(whole) * 3 // 4])
    damaged = tmp_path / "damaged.npz"  # its directory intact, a member's bytes overwritten
    middle = len(whole) // 2
    damaged.write_bytes(whole[:middle] + b"\x55" * 1000 + whole[middle + 1000:])
    assert damaged.read_bytes() != whole
    not_zip = tmp_path / "page.npz"  # a download that saved a login page under the model's name
    not_zip.write_text("<html><body>Please sign in to download SMPL</body></html>\n")
    pkl = tmp_path / "truncated.pkl"
    whole_pkl = pickle.dumps(dict(np.load(model_npz)), protocol=4)
    pkl.write_bytes(whole_pkl[: len(whole_pkl) // 2])
    cases = [(truncated, "a truncated or corrupt .npz body model"), (damaged, "a damaged .npz body model"),
             (not_zip, "not an .npz (a zip archive) though named one"), (pkl, "the body model file is cut short")]
    for path, words in cases:
        for message in _said(path, tmp_path, capsys):
            assert f"{path}: {words}" in message, message
            assert "copy" in message and "\n" not in message
            if path is not not_zip:  # the file is damaged: its layout is not the question
                assert "expected a chumpy-free" not in message and "official SMPL .pkl" not in message, message


def test_an_intact_npz_loads_as_before(model_npz):
    """The damage checks leave a valid .npz as it was: the same arrays, the same body."""
    arrays = B.read_model_arrays(model_npz)
    with np.load(model_npz) as npz:
        assert sorted(arrays) == sorted(npz.files)
        assert all(np.array_equal(np.asarray(arrays[k]), npz[k]) for k in B.REQUIRED_LAYOUT)
        assert arrays["vertex_ids"] == dict(zip(B.EXTRA_NAMES, npz["vertex_ids"].tolist(), strict=True))


def test_body_convert_of_an_npz_keeps_its_vertex_ids(model_npz, tmp_path):
    """An .npz holds its face vertices as 5 ints; ``body convert`` kept only the dict form, so the converted file
    of a mesh other than SMPL's (4008 vertices here) no longer loaded: "no 'vertex_ids'"."""
    converted = B.convert_smpl_pkl(model_npz, tmp_path / "plain.pkl")
    again, arrays = B.read_model_arrays(converted), B.read_model_arrays(model_npz)
    assert all(np.array_equal(np.asarray(again[k]), np.asarray(arrays[k])) for k in B.REQUIRED_LAYOUT)
    assert again["vertex_ids"] == arrays["vertex_ids"]
    pose = (np.zeros((1, 3)), np.full((1, 69), 0.1), np.full((1, 10), 0.5))
    assert np.array_equal(B.load_body_model(model_npz)(*pose).vertices.numpy(),
                          B.load_body_model(converted)(*pose).vertices.numpy())
