"""Session 35: seven messages a walk through a memory on a Chroma server found wrong or without a way on (a URL
with a path silently reached the server's root; a refused password from HMRCRITIC_CHROMA_URL did not say where
the URL came from; "stopped answering" said nothing to do; a busy server memory was told to use another
--memory-dir; explore's summary did not name the server; doctor said the local folder held the write lock only;
a piped answer to a question let the next message run onto the prompt's line).

Each test fails on the code before its fix (store.py, commands/explore.py, commands/doctor.py,
commands/__init__.py)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hmrcritic.cli import main
from hmrcritic.errors import AssetError, InputError
from hmrcritic.memory.store import MemoryStore, _parse_chroma_url

SECRET = "pw-s35-fix-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a. a path, query or fragment in the URL ----------------------------------------------------------------
@pytest.mark.parametrize("tail, part", [("/chroma", "a path"), ("/api/v2", "a path"), ("?tenant=x", "a query"),
                                        ("#frag", "a fragment"), ("/chroma?x=1", "a path and a query")])
@pytest.mark.parametrize("scheme", ["http://", ""])
def test_a_url_with_a_path_query_or_fragment_is_refused(tail, part, scheme):
    """``http://host:P/chroma`` connected to the server's root while every message named ".../chroma": a server
    behind a path prefix was never the one reached, and nothing said so."""
    url = f"{scheme}alice:{SECRET}@127.0.0.1:8123{tail}"
    with pytest.raises(InputError) as info:
        _parse_chroma_url(url)
    msg = str(info.value)
    assert SECRET not in msg and "***@127.0.0.1:8123" in msg, msg
    assert f"has {part}," in msg and "http(s)://[user:password@]host:port" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("url", ["http://127.0.0.1:8123", "http://127.0.0.1:8123/", "127.0.0.1:8123/",
                                 "https://u:p@example.org:8443/"])
def test_a_bare_trailing_slash_stays_accepted(url):
    host, port, ssl, _ = _parse_chroma_url(url)
    assert (host, port) in {("127.0.0.1", 8123), ("example.org", 8443)} and ssl == url.startswith("https")


def test_the_cli_refuses_a_url_with_a_path_before_connecting(tmp_path, capsys):
    url = f"http://alice:{SECRET}@127.0.0.1:{_free_port()}/chroma"
    assert main(["memory", "stats", "--chroma-url", url, "--memory-dir", str(tmp_path / "lock")]) == 2
    err = capsys.readouterr().err
    assert "has a path" in err and "cannot reach" not in err and SECRET not in err, err


# ---- b. a refused password names HMRCRITIC_CHROMA_URL -------------------------------------------------------
@pytest.fixture()
def refusing_server():
    """A server that answers every request with 401 (a basic-auth proxy in front of Chroma)."""

    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"error": "Unauthorized", "message": "no"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_a_refused_password_from_the_environment_says_where_the_url_came_from(refusing_server, tmp_path,
                                                                               monkeypatch):
    """"cannot reach …" said "(from HMRCRITIC_CHROMA_URL; unset it …)", a refused password did not: the user was
    told to check the password "in the URL" without being told which setting held it."""
    url = f"http://alice:{SECRET}@127.0.0.1:{refusing_server}"
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", url)
    with pytest.raises(AssetError) as info:
        MemoryStore(tmp_path / "m")
    msg = str(info.value)
    assert "refused the credentials" in msg and "(from HMRCRITIC_CHROMA_URL" in msg and SECRET not in msg, msg
    # given as --chroma-url instead, the URL is the user's own words: no origin to add
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL")
    with pytest.raises(AssetError) as info:
        MemoryStore(tmp_path / "m", chroma_url=url)
    assert "refused the credentials" in str(info.value) and "HMRCRITIC_CHROMA_URL" not in str(info.value)


# ---- c. "stopped answering" says what to do -----------------------------------------------------------------
def test_a_server_that_stopped_answering_says_to_check_it_and_run_again():
    import httpx

    from hmrcritic.memory.store import _ServerProxy

    class Gone:
        def count(self):
            raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(AssetError) as info:
        _ServerProxy(Gone(), "http://127.0.0.1:1").count()
    msg = str(info.value)
    assert "stopped answering (ConnectError: [Errno 111] Connection refused)" in msg, msg
    assert "check that it still runs" in msg and "run the same command again" in msg, msg
    assert "resume where they stopped" in msg, msg
    assert info.value.endpoint_unusable and info.value.cause == "stopped answering"  # what a batch reads: unchanged


# ---- d. a busy server memory is not sent to another --memory-dir --------------------------------------------
def test_a_busy_server_memory_is_not_told_to_use_another_memory_dir(chroma_url, tmp_path, capsys,
                                                                   memory_held_elsewhere):
    """The lock is the local folder's: another --memory-dir lets two jobs write the one server memory at once,
    the doubled statistics the lock is there to prevent."""
    lock = tmp_path / "lock"
    with memory_held_elsewhere(lock):
        assert main(["memory", "reset", "--yes", "--chroma-url", chroma_url, "--memory-dir", str(lock)]) == 2
        err = capsys.readouterr().err
        with (MemoryStore(lock, chroma_url=chroma_url) as store, pytest.raises(InputError) as info,
              store.exclusive("an exploration")):
            pass
        with (MemoryStore(lock, chroma_url="") as disk, pytest.raises(InputError) as on_disk,
              disk.exclusive("an exploration")):
            pass
    assert "busy with an exploration" in err and "another --memory-dir" not in err, err
    assert "busy with an exploration" in str(info.value) and "another --memory-dir" not in str(info.value)
    assert "another --memory-dir" in str(on_disk.value)  # the folder's own memory on disk: still good advice


def test_a_write_lock_held_too_long_on_a_server_memory_is_not_told_to_use_another_memory_dir(tmp_path,
                                                                                            monkeypatch):
    from hmrcritic.memory.store import LOCK_NAME, _acquire_write_lock

    monkeypatch.setenv("HMRCRITIC_MEMORY_LOCK_TIMEOUT", "0")
    tmp_path.mkdir(exist_ok=True)
    code = textwrap.dedent(f"""
        import sys
        from filelock import FileLock
        with FileLock({str(tmp_path / LOCK_NAME)!r}):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        server = f"http://127.0.0.1:1 (its folder on this machine, {tmp_path}, for the write lock and records)"
        with pytest.raises(AssetError) as info:
            _acquire_write_lock(tmp_path, server)
        with pytest.raises(AssetError) as on_disk:
            _acquire_write_lock(tmp_path, str(tmp_path))
    finally:
        holder.communicate("\n", timeout=60)
    assert "stayed locked" in str(info.value) and "another --memory-dir" not in str(info.value), info.value
    assert "HMRCRITIC_MEMORY_LOCK_TIMEOUT to wait longer" in str(info.value)
    assert "another --memory-dir" in str(on_disk.value)


# ---- e. explore's summary names the server ------------------------------------------------------------------
def test_explore_summary_names_the_server_it_explored(chroma_url, tmp_path, capsys, monkeypatch):
    """"explored 0 groups …; memory version V; log <folder>/explore_log.jsonl" named only this machine's folder
    for a memory on a Chroma server: not which server the exploration had grown."""
    url = chroma_url.replace("http://", f"http://alice:{SECRET}@")  # the test server ignores the credentials
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", url)
    assert main(["explore", "--rounds", "0", "--calibration-groups", "0", "--memory-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("explored ")]
    assert f" at {chroma_url.replace('http://', 'http://***@')};" in line and SECRET not in out, line


# ---- f. doctor: the local folder also keeps the exploration records -----------------------------------------
def test_doctor_says_the_local_folder_keeps_the_exploration_records(monkeypatch, tmp_path):
    from hmrcritic.commands import doctor

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", f"http://alice:{SECRET}@chroma.lab:8123")
    report = doctor.run_checks(skip=tuple(n for n, _ in doctor.CHECKS if n != "folders"))
    (check,) = [c for c in report["checks"] if c["name"] == "folders"]
    folders = doctor._summary(check)
    assert "write lock only" not in folders and "exploration records" in folders, folders
    assert "exploration records" in doctor._memory_line(check)
    assert check["memory_server"] == "http://***@chroma.lab:8123"  # --json's keys and values: unchanged
    assert check["folders"]["memory"]["path"] == str(tmp_path / "memory")


# ---- g. a piped answer ends the prompt's line ---------------------------------------------------------------
@pytest.mark.parametrize("answer", ["n", "y"])
def test_a_piped_answer_ends_the_prompt_line(answer, monkeypatch, capsys):
    """Not typed at a terminal, the answer is not echoed: "…? [y/N]: not confirmed: …" (or "[y/N]:error: …" for
    what came after a "y") ran onto the prompt's line."""
    from hmrcritic.commands import confirm_or_stop

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{answer}\n"))
    if answer == "n":
        with pytest.raises(SystemExit):
            confirm_or_stop("Delete it?", "nothing deleted")
    else:
        confirm_or_stop("Delete it?", "nothing deleted")
        print("error: what came next", file=sys.stderr)
    err = capsys.readouterr().err
    assert err.splitlines()[0].rstrip() == "Delete it? [y/N]:", err
    assert err.splitlines()[1] in ("not confirmed: nothing deleted", "error: what came next"), err


def test_an_answer_typed_at_a_terminal_adds_no_blank_line(monkeypatch, capsys):
    from hmrcritic.commands import confirm_or_stop

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty("y\n"))
    confirm_or_stop("Delete it?", "nothing deleted")
    assert capsys.readouterr().err == "Delete it? [y/N]: "  # the terminal echoes the Enter itself
