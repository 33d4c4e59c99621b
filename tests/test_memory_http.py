"""The dual memory on a Chroma server (``--chroma-url`` / ``HMRCRITIC_CHROMA_URL``): a local ``chroma run``
started per module (about 3 s; skipped where the executable is missing or does not come up).

Each case came from running the CLI against a server: a mismatched server memory that `memory reset` could
not rebuild (while the error told the user to reset), a password in the reset prompt, bare ValueErrors for a
malformed URL, and httpx's nameless ``ConnectError`` once the server stopped after the store had opened."""

from __future__ import annotations

import sys

import pytest

from hmrcritic.cli import main
from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory.store import MemoryStore


@pytest.fixture()
def server(chroma_server_port):
    return chroma_server_port


@pytest.fixture()
def url(chroma_url):
    return chroma_url


def test_reset_rebuilds_a_server_memory_built_with_another_embedding(url, tmp_path, capsys):
    """The open check tells the user to run `memory reset`; with --chroma-url that reset opened the memory
    first and failed on the same check, so a mismatched server memory could never be rebuilt."""
    import chromadb

    MemoryStore(tmp_path / "lock", chroma_url=url)  # creates and seeds
    col = chromadb.HttpClient(host="127.0.0.1", port=int(url.rsplit(":", 1)[1])).get_collection(
        "episodic_prototypes")
    col.modify(metadata={**col.metadata, "embedding_dim": 72})  # built by another hmrcritic
    with pytest.raises(AssetError, match="memory reset"):
        MemoryStore(tmp_path / "lock", chroma_url=url)

    assert main(["memory", "reset", "--yes", "--chroma-url", url, "--memory-dir", str(tmp_path / "lock")]) == 0
    assert "memory reset at" in capsys.readouterr().out
    store = MemoryStore(tmp_path / "lock", chroma_url=url, read_only=True)
    assert store.rules.count() > 0 and store.prototypes.count() == 0


def test_reset_prompt_does_not_show_the_password(url, tmp_path, capsys, monkeypatch):
    import io

    secret_url = url.replace("http://", "http://bob:hunter2secret@")
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    assert main(["memory", "reset", "--chroma-url", secret_url, "--memory-dir", str(tmp_path / "lock")]) != 0
    out = capsys.readouterr()
    assert "Delete all rules" in out.out + out.err
    assert "hunter2secret" not in out.out + out.err


@pytest.mark.parametrize("bad", ["http://[::1", "ftp://127.0.0.1:8000", "http://bob:hunter2secret@127.0.0.1:port"])
def test_malformed_chroma_url_is_an_input_error_without_the_password(bad, tmp_path):
    """urlparse's bare ValueError ("Port could not be cast…", "Invalid IPv6 URL") reached the user as a generic
    error, and an ftp:// URL was quietly taken as http."""
    with pytest.raises(InputError, match="chroma url") as info:
        MemoryStore(tmp_path / "lock", chroma_url=bad)
    assert "hunter2secret" not in str(info.value)


def test_server_that_stops_after_open_gives_an_error_naming_it(tmp_path):
    """Once open, a server that went away surfaced as httpx's bare ``ConnectError: [Errno 111] Connection
    refused``: no mention of Chroma or of which server."""
    from conftest import start_chroma_server, stop_process

    proc, port = start_chroma_server(tmp_path / "srv")
    try:
        store = MemoryStore(tmp_path / "lock", chroma_url=f"http://bob:hunter2secret@127.0.0.1:{port}")
        assert store.rules.count() > 0
    finally:
        stop_process(proc)
    store.refresh()
    for call in (lambda: store.rules.all(), store.prototypes.count, store.stats):
        with pytest.raises(AssetError, match=rf"Chroma server at http://\*\*\*@127\.0\.0\.1:{port}") as info:
            call()
        assert "hunter2secret" not in str(info.value)


def test_two_machines_adding_at_once_keep_the_version_true(url, tmp_path):
    """Writers on two machines share the server but not a file lock. The prototype running sum used to be
    stored with the collection's count *after* the write, which already held the other writer's records:
    count matched, sum did not, so ``version()`` silently disagreed with the content (verify_version False)."""
    import threading

    import numpy as np

    from hmrcritic.memory.embeddings import POSE_DIM
    from hmrcritic.memory.schema import Prototype

    stores = [MemoryStore(tmp_path / name, chroma_url=url) for name in ("a", "b")]
    rng = np.random.default_rng(0)
    barrier = threading.Barrier(2)

    errors: list[BaseException] = []

    def write(store: MemoryStore, tag: str) -> None:
        try:
            _write(store, tag)
        except BaseException as exc:  # surfaced by the assert below, not lost in the thread
            errors.append(exc)
            barrier.abort()

    def _write(store: MemoryStore, tag: str) -> None:
        for b in range(4):
            barrier.wait()
            v = rng.normal(size=(15, POSE_DIM))
            store.prototypes.add([Prototype(proto_id=f"{tag}-{b}-{i}", embedding=v[i].tolist(), overall=5,
                                            motion_structure=5, physical_feasibility=5, image_alignment=5)
                                  for i in range(15)])

    threads = [threading.Thread(target=write, args=(s, t)) for s, t in zip(stores, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = MemoryStore(tmp_path / "c", chroma_url=url, read_only=True)
    assert fresh.prototypes.count() == 120
    assert fresh.verify_version()
    assert stores[0].version() == stores[1].version() == fresh.version()


def test_credentials_in_the_url_are_sent_as_basic_auth(tmp_path):
    """``http://user:pw@host`` dropped user and password, so a server requiring auth answered 401 however the
    URL was written. They go as HTTP basic auth now — and still never into a message."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"error": "Unauthorized", "message": "no"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://al%40ice:s3cr%3Dt@127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(AssetError) as info:
            MemoryStore(tmp_path / "m", chroma_url=url)
    finally:
        srv.shutdown()
    assert seen and seen[0] == "Basic " + base64.b64encode(b"al@ice:s3cr=t").decode()
    assert "s3cr" not in str(info.value) and "al%40ice" not in str(info.value)


def test_read_only_on_an_empty_server_says_there_is_no_memory(url, tmp_path):
    """An empty server read-only (``memory stats``, a frozen export) said the memory "lacks collection(s) …
    or was reset half-way" — there was never one."""
    with pytest.raises(AssetError, match="no hmrcritic memory on the Chroma server at http://127.0.0.1"):
        MemoryStore(tmp_path / "m", chroma_url=url, read_only=True)


def test_server_proxy_can_be_copied():
    """The proxy looked its own fields up through ``__getattr__``: a copy (or an unpickled one) recursed
    without end before they existed."""
    import copy

    from hmrcritic.memory.store import _ServerProxy

    p = copy.copy(_ServerProxy([3, 1, 3], "http://127.0.0.1:1"))
    assert p.count(3) == 2
