"""The critique agent as a LangGraph state machine.

``render → recall → critique → reflect ⟲ → memory_write``: ``reflect`` either sends the group back to
``critique`` with feedback (revise, bounded by ``AgentConfig.max_reflections``) or on to ``memory_write``.
One thread per group (``thread_id`` = group id) in a SQLite checkpointer under ``runs_dir()``, so a group
that was already critiqued is returned from its checkpoint and an interrupted one resumes where it stopped.

:func:`build_graph` returns the uncompiled :class:`StateGraph` (importable without touching SQLite);
:func:`compile_graph` adds a checkpointer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from langgraph.graph import END, START, StateGraph

from hmrcritic import config as hconfig
from hmrcritic.agent import nodes
from hmrcritic.agent.runs import checkpoint_error
from hmrcritic.agent.state import AgentState

_SAVERS: dict[str, tuple] = {}  # resolved path → (saver, (device, inode) of its file)
_SAVER_LOCK = threading.Lock()


def build_graph() -> StateGraph:
    g = StateGraph(AgentState)
    g.add_node("render", nodes.render)
    g.add_node("recall", nodes.recall)
    g.add_node("critique", nodes.critique)
    g.add_node("reflect", nodes.reflect)
    g.add_node("memory_write", nodes.memory_write)
    g.add_edge(START, "render")
    g.add_edge("render", "recall")
    g.add_edge("recall", "critique")
    g.add_edge("critique", "reflect")
    g.add_conditional_edges("reflect", nodes.route_after_reflect,
                            {"critique": "critique", "memory_write": "memory_write"})
    g.add_edge("memory_write", END)
    return g


def checkpoint_path() -> Path:
    return hconfig.runs_dir() / "checkpoints.sqlite"


CHECKPOINT_TIMEOUT_S = 30.0


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            or "database is locked" in str(exc))


def _set_up(conn: sqlite3.Connection, saver_class):
    """The saver on ``conn`` with its tables made, retrying while another process sets up the same new file.

    Two processes opening one new database at once (two critiques started together): SQLite answers
    ``PRAGMA journal_mode=WAL`` with "database is locked" at once, without waiting the connection's timeout,
    while the other holds its write lock making the tables (it does not wait where waiting could deadlock),
    so the second critique failed before it began. Retried here with backoff up to the same timeout; the set-up
    is idempotent (``CREATE TABLE IF NOT EXISTS``)."""
    deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # a damaged file fails here, not mid-critique
            saver = saver_class(conn)
            saver.setup()
            return saver
        except sqlite3.OperationalError as exc:
            left = deadline - time.monotonic()
            if not _is_busy(exc) or left <= 0:
                raise
            if conn.in_transaction:
                conn.rollback()
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.25)


def open_checkpointer(path: str | Path | None = None):
    """A SqliteSaver on ``path`` (default ``runs_dir()/checkpoints.sqlite``), one per path and process.

    ``check_same_thread=False`` lets worker threads (``critique_groups``) share it; SqliteSaver serialises
    its own access with a lock.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path) if path is not None else checkpoint_path()
    key = str(path.resolve())
    with _SAVER_LOCK:
        cached = _SAVERS.get(key)
        if cached is not None and cached[1] == _file_id(path):
            return cached[0]
        # none yet, or the file was removed or replaced since it was opened (``rm -r runs/`` beside a notebook or
        # a service): the connection kept writing every checkpoint into the deleted file, so no later process,
        # `runs` command or resume saw any of them, and the space never came back while the process lived
        path.parent.mkdir(parents=True, exist_ok=True)
        # a writer holding the file (another critique's checkpoint) is waited for, not failed at once
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=CHECKPOINT_TIMEOUT_S)
        try:
            saver = _set_up(conn, SqliteSaver)
        except sqlite3.Error as exc:
            conn.close()
            raise checkpoint_error(path, exc) from None
        _SAVERS[key] = (saver, _file_id(path))
        return saver


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


_COMPILED: dict[int, object] = {}  # id(checkpointer) → (checkpointer, compiled graph), most recently used last
COMPILED_KEPT = 8  # compiled graphs kept per process: the default checkpointer's and a few a caller passes


def compile_graph(checkpointer=None):
    """The compiled graph; ``checkpointer=None`` → the default SQLite checkpointer (pass ``False`` for none).

    Compiled once per checkpointer and process (compiling costs ~0.1 s, a whole group's critique ~0.3 s), for
    the :data:`COMPILED_KEPT` checkpointers used last: the cache holds each checkpointer, so a caller passing a
    new one per critique (``critique_group(checkpointer=InMemorySaver())``) kept every one of them and all the
    checkpoints in it for the life of the process (~0.2 MB per group of 16, without bound).

    With LangSmith tracing on, the upload client is made to scrub secrets first (``redact.guard_langsmith``),
    here for every judge: only the VLM judge did it, so a builtin critique's runs went out through LangSmith's
    plain client, and a VLM critique after one in the same process (the client made then was kept) too."""
    from hmrcritic.redact import guard_langsmith

    guard_langsmith()
    if checkpointer is None:
        checkpointer = open_checkpointer()
    if checkpointer is False:
        return build_graph().compile()
    with _SAVER_LOCK:
        key = id(checkpointer)
        cached = _COMPILED.pop(key, None)
        if cached is None or cached[0] is not checkpointer:
            cached = (checkpointer, build_graph().compile(checkpointer=checkpointer))
        _COMPILED[key] = cached  # (re)inserted last: the least recently used one goes first
        while len(_COMPILED) > COMPILED_KEPT:
            _COMPILED.pop(next(iter(_COMPILED)))
        return cached[1]


def mermaid() -> str:
    """The graph as Mermaid text (offline; ``draw_mermaid_png`` would call a web service)."""
    return build_graph().compile().get_graph().draw_mermaid()
