"""Review s25: the dual memory on a real Chroma server (``chroma run`` on 127.0.0.1, conftest's session server),
shared by writers on two machines — two stores on two local folders, as two machines have — and used after
another machine reset it.

A write batch on a server started from the collections (and their metadata) the store had fetched when it opened:
a prototype another machine replaced meanwhile left the running content sum stale, so the version disagreed with
the content for good; and after another machine's `memory reset` every write failed with Chroma's bare
``NotFoundError: Collection [uuid] does not exist`` (a write to a memory on disk reopens it and goes through)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hmrcritic.memory.embeddings import POSE_DIM
from hmrcritic.memory.schema import Prototype
from hmrcritic.memory.store import MemoryStore


def _proto(pid: str, v: np.ndarray, overall: float) -> Prototype:
    return Prototype(proto_id=pid, embedding=v.tolist(), overall=overall, motion_structure=5,
                     physical_feasibility=5, image_alignment=5)


def test_a_server_write_sums_prototypes_from_the_servers_metadata_not_the_one_fetched_at_open(chroma_url, tmp_path):
    """Machine B replaces a prototype (the count stays), then machine A — open since before — adds one: A's
    batch took the content sum from the collection metadata it fetched at open (B's change not in it, and its
    count still matching), so the stored sum missed B's change and ``verify_version`` stayed False."""
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, POSE_DIM))
    a = MemoryStore(tmp_path / "a", chroma_url=chroma_url)
    a.prototypes.add([_proto("p0", vecs[0], 5.0)])
    a.version()
    b = MemoryStore(tmp_path / "b", chroma_url=chroma_url)
    b.prototypes.add([_proto("p0", vecs[0], 2.0)])  # replaced: same id, same count, other content
    a.prototypes.add([_proto("p1", vecs[1], 7.0)])
    fresh = MemoryStore(tmp_path / "c", chroma_url=chroma_url, read_only=True)
    assert fresh.prototypes.count() == 2
    assert fresh.verify_version()
    assert a.version() == fresh.version()


def test_a_write_after_another_machine_reset_the_server_memory_goes_to_the_new_memory(chroma_url, tmp_path):
    """A worker open on the server while another machine ran `memory reset` there: its next write (a critique
    learning, ``record_use``) failed with Chroma's bare "Collection [uuid] does not exist", naming neither the
    memory nor what happened. It starts from the server's collections now, as a write on disk reopens the folder."""
    a = MemoryStore(tmp_path / "a", chroma_url=chroma_url)
    rule = a.rules.all()[0]
    a.prototypes.count()
    MemoryStore(tmp_path / "b", chroma_url=chroma_url).reset()
    a.rules.record_use([rule.rule_id], True)
    a.prototypes.add([_proto("p0", np.ones(POSE_DIM), 4.0)])
    fresh = MemoryStore(tmp_path / "c", chroma_url=chroma_url, read_only=True)
    assert fresh.rules.get([rule.rule_id])[0].n_used == rule.n_used + 1
    assert fresh.prototypes.count() == 1 and fresh.verify_version()


@pytest.mark.parametrize("on", ["disk", "server"])
def test_a_read_after_another_process_reset_the_memory_names_it_and_the_next_one_works(on, tmp_path, request):
    """`memory reset` in another process while a critique has the memory open (on disk or on a server): the
    critique's next read (its prototype recall) failed with Chroma's bare "Collection [uuid] does not exist",
    naming neither the memory nor the reset, and so did every later read of that store (a long batch of critiques
    failed every group after it). Now it is one line naming the memory, and the next read sees the new memory."""
    from hmrcritic.errors import AssetError

    url = request.getfixturevalue("chroma_url") if on == "server" else ""
    store = MemoryStore(tmp_path / "m", chroma_url=url)
    store.prototypes.add([_proto("p0", np.ones(POSE_DIM), 4.0)])
    before = store.version()
    where = ["--chroma-url", url, "--memory-dir", str(tmp_path / "other")] if url else ["--memory-dir",
                                                                                      str(tmp_path / "m")]
    subprocess.run([sys.executable, "-m", "hmrcritic.cli", "memory", "reset", "--yes", *where], check=True,
                   capture_output=True, env={**os.environ, "HMRCRITIC_CHROMA_URL": ""})
    with pytest.raises(AssetError, match=r"memory at .* was reset or dropped by another process") as info:
        store.prototypes.query(np.ones((1, POSE_DIM)), k=3)
    assert (url.removeprefix("http://") if url else str(tmp_path / "m")) in str(info.value)
    assert store.prototypes.count() == 0
    assert store.version() != before
    assert store.version() == MemoryStore(tmp_path / "fresh" if url else tmp_path / "m", chroma_url=url,
                                          read_only=True).version()


@pytest.mark.parametrize("body", [{"error": "AuthorizationError", "message": "Unauthorized"},
                                  {"detail": "Forbidden"}])
@pytest.mark.parametrize("user", ["bob:FAKEs25PW@", ""])
def test_a_server_refusing_the_credentials_says_so_not_that_it_cannot_be_reached(body, user, tmp_path):
    """A server (or the proxy in front of it) answering 401/403 was reported as "cannot reach the Chroma server",
    which sends the user to check that it runs rather than the password. The refusal is named now, with what to
    give, and still never the password."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from hmrcritic.errors import AssetError

    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            data = json.dumps(body).encode()
            self.send_response(401 if "error" in body else 403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(AssetError) as info:
            MemoryStore(tmp_path / "m", chroma_url=f"http://{user}127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
        srv.server_close()
    msg = str(info.value)
    assert "cannot reach" not in msg and f"127.0.0.1:{srv.server_address[1]} refused" in msg
    assert ("check the user and password" in msg) if user else ("put user:password@ before the host" in msg)
    assert "FAKEs25PW" not in msg


def test_a_server_that_is_down_is_still_said_to_be_unreachable(tmp_path):
    """The refusal test above must not take a server that does not answer for one refusing."""
    import socket

    from hmrcritic.errors import AssetError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AssetError, match=rf"cannot reach the Chroma server at http://127\.0\.0\.1:{port}"):
        MemoryStore(tmp_path / "m", chroma_url=f"http://127.0.0.1:{port}")


def test_a_reset_that_cannot_reach_the_server_leaves_its_memory_openable(tmp_path, capsys):
    """`memory reset --yes --chroma-url URL` with the server down marked the memory as being reset before its first
    call there: the reset failed having touched nothing, yet once the server was back every process was refused
    the intact memory ("a reset was cut short … run `memory reset --yes` again"), i.e. told to delete it."""
    from conftest import start_chroma_server, stop_process

    from hmrcritic.cli import main

    data, folder = tmp_path / "srv", tmp_path / "m"
    proc, port = start_chroma_server(data)
    url = f"http://127.0.0.1:{port}"
    try:
        store = MemoryStore(folder, chroma_url=url)
        store.prototypes.add([_proto("p0", np.ones(POSE_DIM), 4.0)])
        before = store.version()
        store.close()
    finally:
        stop_process(proc)
    assert main(["memory", "reset", "--yes", "--chroma-url", url, "--memory-dir", str(folder)]) != 0
    assert "cannot reach the Chroma server" in capsys.readouterr().err
    # the same server back on its port (as after a restart)
    exe = str(Path(sys.executable).with_name("chroma"))
    proc = subprocess.Popen([exe, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.skip("the server did not come back on its port")
                time.sleep(0.2)
        again = MemoryStore(folder, chroma_url=url, read_only=True)
        assert again.prototypes.count() == 1 and again.version() == before
        again.close()
    finally:
        stop_process(proc)


_SERVER_RO_SCRIPT = """
import json, sys
from hmrcritic.memory.store import MemoryStore
out = {}
store = MemoryStore(sys.argv[1], chroma_url=sys.argv[2])
try:
    store.rules.record_use([store.rules.all()[0].rule_id], True)
    out["write"] = "ok"
except Exception as exc:
    out["write"] = f"{type(exc).__name__}: {exc}"
try:
    MemoryStore(sys.argv[1] + "/sub", chroma_url=sys.argv[2]).rules.record_use(["starter-prior"], True)
    out["new"] = "ok"
except Exception as exc:
    out["new"] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(out))
"""


def test_a_server_memory_whose_local_folder_is_read_only_names_that_folder(chroma_url, tmp_path):
    """A server memory's writers on this machine lock its local folder; on a read-only mount the write was refused
    as "memory at http://127.0.0.1:P is not writable" and "cannot create the memory folder http://127.0.0.1:P" —
    the server blamed, the folder to change unnamed. Both name the folder now."""
    import json

    from test_memory_store_edges import _run_on_read_only_folder

    folder = tmp_path / "m"
    MemoryStore(folder, chroma_url=chroma_url).close()
    script = tmp_path / "ro.py"
    script.write_text(_SERVER_RO_SCRIPT)
    proc = _run_on_read_only_folder(folder, script, str(folder), chroma_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    for who, named in (("write", folder), ("new", folder / "sub")):
        assert out[who].startswith("UnwritableMemoryError: "), (who, out[who])
        assert f"its folder on this machine, {named}," in out[who] and "--memory-dir" in out[who], (who, out[who])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-x", "-q"]))
