"""The dual memory: one Chroma database with a rule collection and a prototype collection.

Storage: ``chromadb.PersistentClient`` in ``config.memory_dir()`` (or ``path``) by default; a Chroma
server through ``chromadb.HttpClient`` when ``chroma_url`` (or ``HMRCRITIC_CHROMA_URL``) is given, for many
workers on several machines.

Writers: two processes writing one embedded collection at once silently corrupt its vector index, and a
process does not see another's new vectors until it reopens its client (STACK.md). So every write batch
takes ``<memory_dir>/.write.lock`` (``filelock``) and, for the embedded store, drops this process's cached
Chroma system and reopens it *inside* the lock, so the batch starts from what is on disk (skipped when a
sequence file shows that no other process wrote since this one did). Readers that want
other processes' writes call :meth:`MemoryStore.refresh`.

On a Chroma server the lock file is each machine's own, so batches from two machines are not serialised: the
server keeps every record, and the prototype part of the version notices an interleaved writer (its stored
count no longer matches) and rescans; but a rule's use statistics read and rewritten by two machines at the
same instant keep one of the two updates. Learning (exploration) is one process; many machines *reading* a
server memory (export workers, critique) is the case the server is for.

Frozen memory: ``read_only=True`` refuses every write (scoring for export/evaluation reads a frozen memory
and records its :meth:`MemoryStore.version`). Chroma 1.5 rewrites a few bytes of its SQLite file and of the
HNSW ``length.bin`` whenever a client opens a database, even for pure reads, so "unchanged" is defined by
the content hash :meth:`version`, not by file bytes.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from hmrcritic import config
from hmrcritic.errors import AssetError, InputError, keywords_checked
from hmrcritic.io import atomic_write_json, exclusive_lock, pid_alive
from hmrcritic.memory.embeddings import POSE_DIM, POSE_EMBEDDING_ID, TEXT_DIM, TEXT_EMBEDDING_ID
from hmrcritic.memory.prototypes import PROTOTYPES_COLLECTION, PrototypeMemory, proto_digest
from hmrcritic.memory.rules import RULES_COLLECTION, RuleMemory, rule_key
from hmrcritic.memory.schema import Prototype, Rule, ScoreCalibration
from hmrcritic.redact import MASK, redact_url, register_url, scrub

log = logging.getLogger("hmrcritic.memory")

SCHEMA_VERSION = 1
EXPORT_FORMAT = "hmrcritic-memory"
LOCK_NAME = ".write.lock"
# Who holds the write lock (pid, host, command line, since when), written by the holder and removed on release:
# a writer kept waiting says whom it waits for (the lock itself records nothing).
HOLDER_NAME = ".write.json"
LOCK_NOTE_AFTER_S = 5.0  # a writer waiting this long for the write lock says once (log warning) who holds it
CALIBRATION_KEY = "score_calibration"  # rules-collection metadata key holding the ScoreCalibration JSON
# Exploration's records beside the collections (hmrcritic.agent.explore): which groups the contents were
# learned from, its progress, a batch not yet applied and its log. They describe the contents, so a reset
# deletes them with them.
EXPLORE_FILES = ("explored_on.json", "explore_progress.json", "explore_pending.json", "explore_log.jsonl")
EXCLUSIVE_NAME = ".exclusive.lock"  # held for a whole exploration / import / reset (MemoryStore.exclusive)
# Held while this process starts Chroma on the folder (:func:`_persistent_client`): Chroma makes its tables on
# the first open without any lock of its own, so two processes opening one new memory at once (two critiques
# started together on a fresh home) raced, and one failed with "table collections already exists".
OPEN_LOCK_NAME = ".open.lock"
# Written before a reset deletes anything and removed once it is done (:func:`resetting`): a reset cut short
# between dropping the collections and deleting the exploration records left an empty memory whose progress
# record made the next exploration skip its rounds; such a memory now refuses to open until reset again.
RESET_MARKER = ".reset-unfinished.json"
# Written before a new memory's collections are created and removed once its starter rules are in: a process
# killed between the two left a memory that opened with no rules at all, silently and for good (the rules
# collection existed, so nothing seeded it again). An open that finds it finishes the seeding.
CREATE_MARKER = ".create-unfinished.json"
# Of EXPLORE_FILES, what an export carries besides the collections (export_json / import_json): the record of
# the groups the contents were learned from (the guard against evaluating on them: without it an imported memory
# could be evaluated on its own training groups) and the exploration progress (which rounds of which runs the
# contents already hold: without it, continuing that exploration in the imported memory counts them again).
# Not carried: a pending batch (crash recovery of the source folder) and the log (history, not meaning).
EXPORTED_FILES = {"explored_on": EXPLORE_FILES[0], "explore_progress": EXPLORE_FILES[1]}


def _lock_timeout_s() -> float:
    """How long a writer waits for the memory's write lock (``HMRCRITIC_MEMORY_LOCK_TIMEOUT``, 300 s)."""
    return config.env_number("HMRCRITIC_MEMORY_LOCK_TIMEOUT", 300.0, float, 0)


# name -> (embedding identity, dimension); written into collection metadata, checked on open.
COLLECTIONS: dict[str, tuple[str, int]] = {
    RULES_COLLECTION: (TEXT_EMBEDDING_ID, TEXT_DIM),
    PROTOTYPES_COLLECTION: (POSE_EMBEDDING_ID, POSE_DIM),
}
_PAGE = 5000


class ReadOnlyMemoryError(AssetError):
    """A write was attempted on a memory opened with ``read_only=True`` (frozen)."""


# Per database path: bumped whenever this process reopens Chroma there, so every MemoryStore on the same
# path re-fetches its client and collections (Chroma shares one "system" per path inside a process).
_GENERATION: dict[str, int] = {}
_PROCESS_LOCKS: dict[str, threading.RLock] = {}
# Per database path: the write sequence number this process last wrote or loaded. Every write batch bumps
# ``<dir>/.write.seq`` under the lock; a batch skips the (costly, ~1 s at 100k prototypes) reopen when the
# file still holds the number this process left there, i.e. nobody else wrote in between.
_SEQ_SEEN: dict[str, int] = {}
# Per database path: bumped after every write batch in this process, so every store on the path drops its
# cached rules/version even when the batch did not need to reopen Chroma.
_EPOCH: dict[str, int] = {}
SEQ_NAME = ".write.seq"
# Per database path: how many embedded MemoryStores of this process use it. Chroma keeps a path's "system" (its
# SQLite connections, the vector index in memory, threads) until it is stopped, and nothing stopped it: every
# memory folder a long process opened stayed loaded after its last store was gone (a learning curve freezes a
# copy per round; at 5k prototypes each kept ~10 MB, 16 file descriptors and 7 threads, up to "too many open
# files"). A store's claim goes when it is closed or garbage-collected, and the system with the path's last one.
_CLAIMS: dict[str, int] = {}
# Paths whose claim a store gave up (close, or its finalizer when collected), settled at the next open or close:
# a finalizer runs inside whatever code the garbage collector interrupted, which may hold a lock it would need.
# A server store's own Chroma client goes here too, to be closed: Chroma gives every HttpClient systems of its
# own (three, with a connection pool), and they too stayed for the life of the process (~1.6 MB and two
# sockets per store).
_RELEASED: list[Any] = []


def _read_seq(path: Path) -> int:
    try:
        return int((path / SEQ_NAME).read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return -1


def _bump_seq(path: Path, seq: int) -> int:
    from hmrcritic.io import atomic_write_text

    seq = max(seq, 0) + 1
    atomic_write_text(path / SEQ_NAME, f"{seq}\n")
    return seq


_REGISTRY_LOCK = threading.Lock()
_EXCLUSIVE_HELD: dict[str, int] = {}  # memory folder -> depth of exclusive() held by this process
# Per database path: depth of the write batch this process is in (changed only under the path's process lock,
# which the batch holds throughout), so a batch nested through another MemoryStore on the same folder shares
# the outer batch's file lock instead of waiting on it until the timeout (a second FileLock blocks its own
# process).
_WRITE_DEPTH: dict[str, int] = {}
# Database paths this process holds a read snapshot of (:meth:`MemoryStore._snapshot`) -> whether a write batch
# nested in it wrote: each such write drops the caches of the path's stores at once (the snapshot's reads must
# see it), and the snapshot's end bumps the write sequence as a batch's end would (other processes reopen).
_SNAPSHOTS: dict[str, bool] = {}


def cli_target(path: str | os.PathLike, chroma_url: str | None = None) -> str:
    """The options naming a memory on the command line, as the user must type them (quoted for the shell):
    ``--memory-dir PATH`` or ``--chroma-url URL`` (credentials masked; see :func:`cli_hint`)."""
    if chroma_url:
        return f"--chroma-url {shlex.quote(redact_url(chroma_url))}"
    return f"--memory-dir {shlex.quote(str(path))}"



DB_FILE = "chroma.sqlite3"  # Chroma's database file in a persistent memory folder


def holds_memory(folder: str | Path) -> bool:
    """Whether ``folder`` holds a memory already (Chroma's database file is there), without opening it: the one
    test of "is this a memory folder yet" for callers that must not create or seed one by looking."""
    return (Path(folder) / DB_FILE).exists()

def cli_hint(command: str, path: str | os.PathLike, chroma_url: str | None = None) -> str:
    """```hmrcritic memory COMMAND --memory-dir PATH``` (or ``--chroma-url``) for an error message: a hint
    without the option acts on the *default* memory, not on the one the message is about."""
    hint = f"`hmrcritic memory {command} {cli_target(path, chroma_url)}`"
    if chroma_url and MASK in redact_url(chroma_url):
        hint += f" (with the server's credentials in place of {MASK})"
    return hint


class UnwritableMemoryError(AssetError):
    """The memory's folder cannot be written (a read-only mount, no permission)."""


def _under(child: Path, parent: Path) -> bool:
    try:
        Path(child).resolve().relative_to(parent)
        return True
    except (ValueError, OSError):
        return False


def _unwritable_cause(exc: BaseException, path: Path) -> str | None:
    """The short reason when ``exc`` (or an exception it came from) says the memory folder ``path`` cannot be
    written — an OSError on a file there (read-only file system, permission), or Chroma's SQLite "attempt to
    write a readonly database" — else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UnwritableMemoryError):
            return None  # said already
        if isinstance(e, OSError):  # only one about a file of this memory
            if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and e.filename and _under(Path(e.filename), path):
                return e.strerror or str(e)
        else:  # Chroma's own errors carry SQLite's text
            text = str(e).lower()
            if "readonly database" in text or "read-only database" in text:
                return "attempt to write a readonly database"
            if "read-only file system" in text:
                return "read-only file system"
        e = e.__cause__ if e.__cause__ is not None else None if e.__suppress_context__ else e.__context__
    return None


def _unwritable_error(location: str, reason: str, read_only: bool = False) -> UnwritableMemoryError:
    if read_only:
        return UnwritableMemoryError(
            f"memory at {location} cannot be opened: its folder is not writable ({reason}), and Chroma writes to "
            "its database even to read it; copy the folder somewhere writable and give that as --memory-dir, or "
            "make it writable")
    return UnwritableMemoryError(f"memory at {location} is not writable ({reason}); give a writable --memory-dir "
                                 "(or set HMRCRITIC_MEMORY or HMRCRITIC_HOME), or make the folder writable "
                                 "(permissions, a read-only mount)")


# Free space below which a Chroma failure on an embedded memory is said to be the full disk's (see _disk_full_cause)
DISK_LOW_BYTES = 64 << 20


def _disk_full_cause(exc: BaseException, path: Path, embedded: bool) -> str | None:
    """The short reason when Chroma's ``exc`` (not an OSError: the command line names those files itself) came
    from the disk holding the memory filling up, else None. Chroma says so only sometimes (SQLite's "database or
    disk is full"); when the disk filled while it moved its log into the vector index it says "Error in
    compaction: Failed to apply logs to the metadata segment", so for an embedded memory the disk's free space is
    looked at too."""
    seen: set[int] = set()
    e: BaseException | None = exc
    chroma = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, AssetError | InputError | OSError):
            return None  # ours (said already), or a file the command line names
        text = str(e).lower()
        if "disk is full" in text or "no space left" in text or "os error 28" in text:
            return "the disk is full"
        chroma |= type(e).__module__.startswith("chromadb")
        e = e.__cause__ if e.__cause__ is not None else None if e.__suppress_context__ else e.__context__
    if not (chroma and embedded):
        return None
    import shutil

    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    return f"the disk holding it has {free / 2**20:.1f} MiB free" if free < DISK_LOW_BYTES else None


@contextmanager
def _unwritable_as_error(path: Path, location: str, read_only: bool = False, embedded: bool = True) -> Iterator[None]:
    """Turn a failure to write the memory folder inside the block into one line naming it (others pass): no
    permission, a read-only mount, or a full disk (Chroma's own words for that named neither the memory nor,
    sometimes, the disk, and the command ended as an internal error)."""
    try:
        yield
    except Exception as exc:
        reason = _unwritable_cause(exc, path)
        if reason is None:
            full = _disk_full_cause(exc, path, embedded)
            if full is None:
                raise
            raise AssetError(f"memory at {location}: Chroma failed to write it ({full}: "
                             f"{' '.join(str(exc).split())[:200]}); free some space and run again (a write cut "
                             "short keeps the batches it finished before the failure)") from exc
        raise _unwritable_error(location, reason, read_only) from exc


def _mkdir(path: Path, location: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise UnwritableMemoryError(f"cannot create the memory folder {location} ({exc.strerror}: {exc.filename}); "
                                    "give a writable --memory-dir (or set HMRCRITIC_MEMORY or HMRCRITIC_HOME)") from exc


# ---- the write lock -------------------------------------------------------------------------------------
def _command_line() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    # a server URL may come without a scheme (user:password@host:port), where scrub cannot tell it from text
    for i, a in enumerate(argv):
        if i and argv[i - 1] == "--chroma-url":
            argv[i] = redact_url(a)
        elif a.startswith("--chroma-url="):
            argv[i] = "--chroma-url=" + redact_url(a.partition("=")[2])
    line = scrub(" ".join(argv))
    return line if len(line) <= 160 else line[:157] + "..."


def _lock_holder(path: Path) -> tuple[str, int | None]:
    """``(who, pid)`` of the process holding the write lock of the memory at ``path``, from the record the
    holder keeps (:data:`HOLDER_NAME`); ``pid`` None when the record is missing or left by a process that died
    (an older hmrcritic, or anything else holding the file), or when the holder runs on another host (a memory
    folder on a shared file system): ``kill`` here would signal an unrelated process."""
    unknown = "another process (it left no record of which)", None
    try:
        rec = json.loads((path / HOLDER_NAME).read_text(encoding="utf-8"))
        pid, host = int(rec["pid"]), str(rec.get("host") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return unknown
    here = socket.gethostname()
    if pid <= 0 or (host in ("", here) and not pid_alive(pid)):
        return unknown
    if host in ("", here) and pid == os.getpid():
        return "this process itself (a write batch it has not finished)", None
    on = f" on {host}" if host and host != here else ""
    cmd = f" `{rec['command']}`" if rec.get("command") else ""
    return f"pid {pid}{on}{cmd}, holding it since {rec.get('since', '?')}", None if on else pid


def _acquire_write_lock(path: Path, location: str):
    """Take ``<path>/.write.lock`` for one write batch and record this process as its holder.

    Waits up to ``HMRCRITIC_MEMORY_LOCK_TIMEOUT`` seconds; after :data:`LOCK_NOTE_AFTER_S` it says once who
    holds it and that it waits (a silent wait of minutes looks like a hang), and a timeout names the holder and
    what to do."""
    from filelock import FileLock, Timeout

    timeout = _lock_timeout_s()
    lock = FileLock(str(path / LOCK_NAME))
    first = min(timeout, LOCK_NOTE_AFTER_S)
    try:
        with _unwritable_as_error(path, location):
            try:
                lock.acquire(timeout=first)
            except Timeout:
                if timeout <= first:
                    raise
                who, _ = _lock_holder(path)
                log.warning("memory at %s is locked by another writer, %s; waiting for it (up to %.0f s in all: "
                            "HMRCRITIC_MEMORY_LOCK_TIMEOUT)", location, who, timeout)
                lock.acquire(timeout=timeout - first)
    except Timeout:
        who, pid = _lock_holder(path)
        stop = f", stop that process if it is stuck (kill {pid})" if pid is not None else ""
        # not for a memory on a Chroma server (a location other than the folder, MemoryStore._folder_location):
        # the lock is the local folder's, and another folder would let two writers at the one server memory
        longer = ("set HMRCRITIC_MEMORY_LOCK_TIMEOUT to wait longer, or use another --memory-dir"
                  if location == str(path) else "or set HMRCRITIC_MEMORY_LOCK_TIMEOUT to wait longer")
        raise AssetError(f"memory at {location} stayed locked by another writer for {timeout:.0f} s: {who} (lock "
                         f"file {path / LOCK_NAME}); wait for it to finish and run again{stop}, {longer}") from None
    rec = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
           "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with suppress(OSError):  # only informs a waiting writer: never worth failing the write for
        atomic_write_json(path / HOLDER_NAME, rec)  # a waiting writer never reads it half-written
    return lock


@contextmanager
def writers_held_off(path: str | os.PathLike) -> Iterator[None]:
    """Hold the write lock of the memory folder ``path`` without opening Chroma there: while it is held, no
    process writes the folder, so it can be read or copied file by file as one state (``explore.frozen_copy``;
    opening a store would rewrite bytes of the very files being copied). Shares a write batch this process is
    in; a folder that cannot take the lock is read without it (nobody can write there either).

    The batch depth is per folder, not per thread, so it is read under the folder's process lock (which a batch
    holds throughout): read without it, a thread of ``critique_many(workers=4)`` recording its scene while
    another thread's critique was in a learning batch took that batch for its own and went on unlocked, and two
    such threads read, added to and wrote ``explored_on.json`` at once (a scene learnt from went unrecorded)."""
    path = Path(path)
    with _REGISTRY_LOCK:
        process_lock = _PROCESS_LOCKS.setdefault(str(path), threading.RLock())
    with process_lock:
        if _WRITE_DEPTH.get(str(path), 0):  # a batch of this very thread
            yield
            return
        try:
            lock = _acquire_write_lock(path, str(path))
        except UnwritableMemoryError:
            yield
            return
        try:
            yield
        finally:
            _release_write_lock(path, lock)


def _release_write_lock(path: Path, lock) -> None:
    try:
        with suppress(OSError):
            (path / HOLDER_NAME).unlink(missing_ok=True)
    finally:
        lock.release()


def _chroma_settings(credentials: str | None = None):
    """Chroma client settings; ``credentials`` ("user:password" from a server URL) are sent as HTTP basic
    auth (Chroma's own ``CHROMA_CLIENT_AUTH_*`` environment variables work too when none are given)."""
    from chromadb.config import Settings

    auth = ({"chroma_client_auth_provider": "chromadb.auth.basic_authn.BasicAuthClientProvider",
             "chroma_client_auth_credentials": credentials} if credentials else {})
    return Settings(anonymized_telemetry=False, allow_reset=False, **auth)


def _chroma_path(path: str) -> str:
    """``path`` as Chroma must be given it: text whose UTF-8 bytes are the folder's name. Python hands a folder
    named in UTF-8 to a process whose file-system encoding is ASCII (``LC_ALL=C PYTHONUTF8=0``) as lone
    surrogates, which Chroma's Rust side cannot take: every memory under ``HMRCRITIC_HOME=/data/équipe`` failed
    to open ("surrogates not allowed"). A name that is no UTF-8 is left as it is (and still refused)."""
    try:
        return os.fsencode(path).decode("utf-8")
    except UnicodeError:
        return path


def _drop_system(path: str) -> None:
    """Stop and forget this process's cached Chroma system for ``path`` (the next client loads it afresh)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    path = _chroma_path(path)  # the identifier Chroma filed the system under
    with SharedSystemClient._refcount_lock:
        old = SharedSystemClient._identifier_to_system.pop(path, None)
        SharedSystemClient._identifier_to_refcount.pop(path, None)
    if old is not None:
        with suppress(Exception):  # a half-stopped old system must not block the fresh one
            old.stop()


def _settle_released() -> None:
    """Count off the claims given up since the last call (:data:`_CLAIMS`); a path left with none has its Chroma
    system stopped. A path another thread is using right now, or a batch of this thread is in, waits for the
    next call."""
    deferred = []
    while True:
        try:
            key = _RELEASED.pop()
        except IndexError:
            break
        if not isinstance(key, str):  # a server store's client
            _close_http_client(key)
            continue
        with _REGISTRY_LOCK:
            lock = _PROCESS_LOCKS.setdefault(key, threading.RLock())
        if not lock.acquire(blocking=False):
            deferred.append(key)
            continue
        try:
            with _REGISTRY_LOCK:
                left = _CLAIMS.get(key, 0) - 1
                if left <= 0 and (key in _WRITE_DEPTH or key in _SNAPSHOTS):
                    deferred.append(key)  # this thread is inside a batch on it
                    continue
                if left > 0:
                    _CLAIMS[key] = left
                    continue
                _CLAIMS.pop(key, None)
            _drop_system(key)
        finally:
            lock.release()
    _RELEASED.extend(deferred)


def _close_http_client(client: Any) -> None:
    """Stop a Chroma HttpClient's systems. ``close()`` stops them but leaves one registered for ever (Chroma 1.5
    files the client's system under a second id when it makes the admin client), with its connection pool."""
    from chromadb.api.shared_system_client import SharedSystemClient

    client = getattr(client, "_target", client)
    system = None
    with suppress(Exception):  # an already closed client, or a registry someone cleared: nothing to look up
        system = None if getattr(client, "_closed", False) else client._system
    with suppress(Exception):
        client.close()
    if system is None:
        return
    with SharedSystemClient._refcount_lock:
        for ident in [i for i, s in SharedSystemClient._identifier_to_system.items() if s is system]:
            SharedSystemClient._identifier_to_system.pop(ident, None)
            SharedSystemClient._identifier_to_refcount.pop(ident, None)
    with suppress(Exception):
        system.stop()


@contextmanager
def _open_lock(path: Path, shared: bool) -> Iterator[None]:
    """Hold ``<path>/.open.lock`` while this process starts Chroma there (see :data:`OPEN_LOCK_NAME`).

    Not needed where this process already runs Chroma on the folder (``shared``: nothing is created), nor
    possible where the folder cannot be written (then Chroma cannot make tables either, and says so). Opens are
    short (about a second at 100k prototypes), so a long write batch, which holds the write lock, never
    delays them."""
    from hmrcritic.io import waiting_lock

    def stuck() -> AssetError:
        return AssetError(f"memory at {path}: another process has been opening it for {_lock_timeout_s():.0f} s "
                          f"(lock file {path / OPEN_LOCK_NAME}); stop it if it is stuck and run again, or set "
                          "HMRCRITIC_MEMORY_LOCK_TIMEOUT to wait longer")

    if shared:
        yield
        return
    # an unwritable folder takes no lock file: opening it reports why (UnwritableMemoryError)
    with waiting_lock(path / OPEN_LOCK_NAME, _lock_timeout_s(), timed_out=stuck):
        yield


# Per database path: (device, inode) of its database file when this process last started Chroma there
# (:func:`_persistent_client`), to tell a folder deleted and made again since from the one Chroma has open.
_DB_IDENTITY: dict[str, tuple[int, int] | None] = {}


def _db_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(Path(path) / DB_FILE)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _persistent_client(path: str, reopen: bool = False, read_only: bool = False):
    """A client on ``path``; with ``reopen`` the process's cached Chroma system is stopped first so the
    new client loads the database (and vector index) fresh from disk. A folder Chroma cannot write is an
    :class:`UnwritableMemoryError` (Chroma writes on every open, so ``read_only`` only changes the advice).

    A cached system whose database file is no longer the folder's (the folder was deleted, or replaced, since)
    is reopened too: a store is freed only by the garbage collector (it and its rule memory refer to each
    other), so after ``shutil.rmtree(folder)`` a new store on the folder got the old system, read the deleted
    memory's rules and prototypes as its own, and its first write failed with "lacks collection …; run
    `memory reset`"."""
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient

    if read_only and not holds_memory(path):
        # a read-only store opens anew what it had open (after close(), a refresh, another store's write): where
        # the memory went meanwhile (a frozen copy's snapshot that `runs prune` removed once its store was closed,
        # a folder deleted) Chroma made a new, empty database, and the store said the memory "lacks collection
        # 'semantic_rules'" and to reset it: a reset of a snapshot, and an empty snapshot folder left behind
        raise AssetError(f"memory at {path} is gone: its folder holds no memory any more (deleted, or a snapshot "
                         "removed by `hmrcritic runs prune` after its store was closed); nothing was opened there: "
                         "open the memory again (for a snapshot, take a new frozen copy)")
    if (not reopen and path in _DB_IDENTITY and _DB_IDENTITY[path] != _db_identity(path)
            and _chroma_path(path) in SharedSystemClient._identifier_to_system):
        reopen = True
    if reopen:
        _drop_system(path)
        with _REGISTRY_LOCK:
            _GENERATION[path] = _GENERATION.get(path, 0) + 1
    shared = _chroma_path(path) in SharedSystemClient._identifier_to_system  # one other stores here use
    try:
        with _open_lock(Path(path), shared):
            client = chromadb.PersistentClient(path=_chroma_path(path), settings=_chroma_settings())
        _DB_IDENTITY[path] = _db_identity(path)
        return client
    except AssetError:  # the open lock's timeout, already one line naming the folder
        raise
    except Exception as exc:
        # Chroma caches the system for the path before starting it: left there, a system whose start failed
        # answered every later open in this process with "'RustBindingsAPI' object has no attribute 'bindings'"
        # (after the folder was made writable, say), hiding the cause. One that was already running for other
        # stores of this process is theirs: a failure here (a transient error) must not stop it under them.
        if not shared:
            _drop_system(path)
        reason = _unwritable_cause(exc, Path(path))
        if reason is not None:
            raise _unwritable_error(path, reason, read_only) from exc
        raise AssetError(f"cannot open the Chroma memory at {path}: {exc}") from exc


def _parse_chroma_url(url: str) -> tuple[str, int, bool, str | None]:
    """``(host, port, ssl, credentials)`` of a Chroma server URL (``http(s)://[user:pw@]host[:port]``, or
    ``host:port``); ``credentials`` is ``"user:pw"`` (sent as basic auth) or None.

    An InputError naming the URL (credentials masked) for anything else: ``urlparse`` raises a bare
    ValueError for a bad port or bracket ("Port could not be cast to integer value"), and a scheme other
    than http(s) was silently taken as plain http."""
    shown = redact_url(url)
    register_url(url)  # its credentials are masked in every later message, trace and file of this process
    try:
        u = urlparse(url if "://" in url else f"http://{url}")
        port = u.port
    except ValueError as exc:
        raise InputError(f"chroma url {shown!r} is not of the form http://host:port ({exc})") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise InputError(f"chroma url {shown!r} is not of the form http://host:port")
    # the client takes host and port only: "http://host:P/chroma" talked to the server's root while every message
    # named ".../chroma", so a server behind a path prefix was never the one reached. A bare trailing "/" is fine
    extra = [what for what, there in (("a path", u.path not in ("", "/") or u.params), ("a query", u.query),
                                      ("a fragment", u.fragment)) if there]
    if extra:
        raise InputError(f"chroma url {shown!r} has {' and '.join(extra)}, which a Chroma server address cannot "
                         "have (the client would connect to the server's root); give it as "
                         "http(s)://[user:password@]host:port")
    # user:password in the URL used to be dropped, so a server that requires auth refused with a puzzling 401
    credentials = f"{unquote(u.username or '')}:{unquote(u.password or '')}" if u.username or u.password else None
    return u.hostname, port or (443 if u.scheme == "https" else 8000), u.scheme == "https", credentials


class _ServerProxy:
    """A Chroma ``HttpClient`` (or a collection it returned) whose calls turn a transport failure into an
    AssetError naming the server.

    A server that stops answering after the store opened (restarted, network gone) otherwise surfaces as
    httpx's bare ``ConnectError: [Errno 111] Connection refused``, which names neither Chroma nor the URL.
    Collections it hands out are wrapped the same way; everything else passes through unchanged.

    The error carries what :func:`hmrcritic.agent.api.unusable_endpoint` reads (``endpoint_unusable``, ``endpoint``,
    ``cause``, ``endpoint_kind``): every later group of a batch meets the same dead server, so an export stops after
    ``UNUSABLE_IN_A_ROW`` of them, as for a VLM endpoint that cannot be used, instead of failing the rest one by one
    (each group, and the run's exit 0, read as the judge's trouble)."""

    def __init__(self, target: Any, where: str):
        self._target = target
        self._where = where

    def __getattr__(self, name: str) -> Any:
        if name in ("_target", "_where"):  # not set yet (a copy or unpickling): no endless recursion
            raise AttributeError(name)
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            import httpx
            from chromadb.api.models.Collection import Collection

            try:
                out = attr(*args, **kwargs)
            except httpx.TransportError as exc:
                # with a way on: the bare cause left the user to guess whether to retry, and whether a long
                # job's work so far was lost (`explore`, `export` and `learning-curve` resume where they stopped,
                # as README says of any interruption; other commands simply run again)
                raise _server_unusable(f"the Chroma server at {self._where} stopped answering "
                                       f"({type(exc).__name__}: {exc}); check that it still runs and answers "
                                       "there, then run the same command again (explore, export and "
                                       "learning-curve resume where they stopped)",
                                       self._where, "stopped answering") from exc
            return _ServerProxy(out, self._where) if isinstance(out, Collection) else out

        return call


class _DiskReads:
    """A collection of an embedded memory whose reads (``get``, ``query``, ``count``) turn a failure that came
    from the memory's disk being full into an AssetError naming the memory and the disk; all else passes through.

    When the disk fills while Chroma moves a write into its vector index, every later read of that collection
    fails until there is room again, in Chroma's words only ("Error executing plan: Internal error: Error creating
    hnsw segment reader: Nothing found on disk"), which name neither the memory nor the disk: a critique or an
    evaluation ended there as an internal error. Writes are said by :func:`_unwritable_as_error` already."""

    _READS = frozenset({"get", "query", "count"})

    def __init__(self, target: Any, path: Path):
        self._target = target
        self._path = path

    def __getattr__(self, name: str) -> Any:
        if name in ("_target", "_path"):  # not set yet (a copy or unpickling): no endless recursion
            raise AttributeError(name)
        attr = getattr(self._target, name)
        if name not in self._READS:
            return attr

        def read(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                full = _disk_full_cause(exc, self._path, embedded=True)
                if full is None:
                    raise
                raise AssetError(f"memory at {self._path}: Chroma failed to read it ({full}: "
                                 f"{' '.join(str(exc).split())[:200]}); free some space and run again (Chroma "
                                 "finishes the write the full disk cut short when it next opens the memory)"
                                 ) from exc

        return read


class _Held:
    """A collection a store fetched and keeps (:attr:`MemoryStore._cols`), whose calls turn Chroma's "Collection
    [id] does not exist" — another process dropped it since (a `memory reset`, on disk or on the same server) —
    into an AssetError naming the memory, after making the store forget what it fetched; all else passes through.

    A memory on disk is reopened by a write batch, and a server's collections are fetched again by one, but a
    read went to the collection fetched before: a critique's prototype recall after another process's reset
    ended in Chroma's bare NotFoundError, naming neither the memory nor the reset, and so did every later read of
    that store (each group of a long batch failed). The error is not retried into the new memory: what the
    caller read before the reset (its rules, the version it recorded) would not belong with it."""

    def __init__(self, target: Any, store: MemoryStore):
        self._target = target
        self._store = weakref.ref(store)

    def __getattr__(self, name: str) -> Any:
        if name in ("_target", "_store"):  # not set yet (a copy or unpickling): no endless recursion
            raise AttributeError(name)
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            from chromadb.errors import NotFoundError

            try:
                return attr(*args, **kwargs)
            except NotFoundError as exc:
                store = self._store()
                if store is None or "does not exist" not in str(exc):
                    raise
                store._forget_fetched()
                raise AssetError(f"memory at {store.location} was reset or dropped by another process while this "
                                 "one had it open (its collections are gone); run again: the memory is read anew"
                                 ) from exc

        return call


def _server_unusable(message: str, where: str, cause: str) -> AssetError:
    """An AssetError for a Chroma server that cannot be used, carrying what
    :func:`hmrcritic.agent.api.unusable_endpoint` reads, so a batch stops after a few groups meet it."""
    err = AssetError(scrub(message))
    err.endpoint_unusable, err.endpoint, err.cause, err.endpoint_kind = True, where, cause, "memory server"
    return err


def _http_client(url: str):
    import chromadb

    host, port, ssl, credentials = _parse_chroma_url(url)
    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_chroma_settings(credentials))
        client.heartbeat()
    except Exception as exc:
        # an address set once in a profile (HMRCRITIC_CHROMA_URL) is easily forgotten: say where it came from and
        # that the memory on disk is one unset away — for a refused password as for a server not reached (a
        # refusal said only "check the user and password in the URL", not which URL setting to look in)
        origin = ("" if url != config.env_chroma_url() else
                  " (from HMRCRITIC_CHROMA_URL; unset it to use the memory folder on disk)")
        if _refused_credentials(exc):
            # it answered: "cannot reach" sent the user to check that the server runs, not the password
            fix = ("check the user and password in the URL" if credentials else
                   "put user:password@ before the host in the URL (or set Chroma's CHROMA_CLIENT_AUTH_* variables)")
            raise AssetError(scrub(f"the Chroma server at {redact_url(url)}{origin} refused "
                                   f"{'the credentials' if credentials else 'access without credentials'} "
                                   f"({' '.join(str(exc).split())[:200]}); {fix}")) from exc
        # flagged as _ServerProxy's: an export's worker that opens the memory after the server went (a new process
        # pool, a replaced Ray actor) failed every group at its setup, one by one, and the export ended 0
        raise _server_unusable(f"cannot reach the Chroma server at {redact_url(url)}{origin}: {exc}",
                               redact_url(url), "cannot be reached") from exc
    return _ServerProxy(client, redact_url(url))


def reach_server(url: str) -> None:
    """Connect to the Chroma server at ``url`` and let go again: an AssetError naming it when it cannot be reached
    or refuses the credentials. For a job that marks the memory before its first call there (``memory reset``
    marks it being reset): with the server down, the reset failed before it touched anything, and yet its mark
    refused the intact server memory to every process after, telling the user to reset it."""
    _close_http_client(_http_client(url))


def _refused_credentials(exc: BaseException) -> bool:
    """Whether the server answered the client's first calls with an authentication refusal (401 / 403): Chroma's
    own auth errors, or the text of a refusal another server in front of it sent (Chroma passes that on as a bare
    ValueError of the response body, without its status)."""
    from chromadb.errors import AuthorizationError, ChromaAuthError

    if isinstance(exc, AuthorizationError | ChromaAuthError):
        return True
    text = str(exc).lower()
    return "unauthorized" in text or "forbidden" in text or "authenticat" in text


_RESETTING: dict[str, int] = {}  # memory folders this process is resetting, how deep (under hold_exclusive)


@contextmanager
def resetting(path: str | os.PathLike, chroma_url: str | None = None) -> Iterator[None]:
    """Mark the memory at ``path`` as being reset (:data:`RESET_MARKER`) for the block, which this process may
    open meanwhile; the marker goes when the outermost block ends without an error. Hold the memory
    (:func:`hold_exclusive`) around it.

    ``chroma_url`` (None: ``HMRCRITIC_CHROMA_URL``; ``""``: on disk — as :class:`MemoryStore`) names the memory
    reset when it is on a server; the marker records which (:func:`_reset_marked`)."""
    key = str(Path(path).expanduser().resolve())
    marker = Path(key) / RESET_MARKER
    chroma_url = (config.env_chroma_url() if chroma_url is None else chroma_url) or None
    with _REGISTRY_LOCK:
        outermost = key not in _RESETTING
        _RESETTING[key] = _RESETTING.get(key, 0) + 1
    try:
        if outermost:  # before the marker: a refused reset leaves the memory as it was, openable
            _check_records_reset_with(Path(key), chroma_url)
        if Path(key).is_dir() and not marker.exists():
            atomic_write_json(marker, {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                 time.gmtime()),
                                       "server": redact_url(chroma_url) if chroma_url else None})
        yield
        with _REGISTRY_LOCK:
            outermost = _RESETTING[key] == 1
        if outermost:
            marker.unlink(missing_ok=True)
    finally:
        with _REGISTRY_LOCK:
            _RESETTING[key] -= 1
            if not _RESETTING[key]:
                del _RESETTING[key]


def _check_records_reset_with(path: Path, chroma_url: str | None) -> None:
    """Refuse a reset that would delete another memory's exploration records (an InputError, before anything
    is marked or dropped).

    A memory on a Chroma server keeps its exploration records (:data:`EXPLORE_FILES`) in the local memory folder,
    the files the folder's own memory on disk keeps its records in, and a reset deletes them with the contents.
    Following the hint for an empty server (``memory reset --yes --chroma-url URL``, on the default folder) thus
    deleted the explored-groups guard and the progress of the user's explored memory on disk, whose rules and
    prototypes stayed: evaluation was no longer refused on the groups it had learned from. The reverse: a reset
    on disk of a folder holding no memory on disk deletes records only a server memory could have written."""
    present = [name for name in EXPLORE_FILES if (path / name).exists()]
    if not present:
        return
    on_disk = holds_memory(path)
    if chroma_url and on_disk:
        mine, theirs = f"the memory on the Chroma server {redact_url(chroma_url)}", "the memory on disk there"
        fix = "give the server memory a folder of its own (--memory-dir, or HMRCRITIC_MEMORY) and reset it there"
    elif not chroma_url and not on_disk:
        mine, theirs = "a memory on disk there", "a memory on a Chroma server (none is on disk there)"
        fix = ("reset that server memory with --chroma-url, or give the memory on disk another --memory-dir, or "
               "move those files aside knowingly")
    else:
        return
    raise InputError(f"memory reset: {path} holds the exploration records ({', '.join(present)}) of {theirs}, "
                     f"which a reset of {mine} would delete (both keep them in that folder), and with them the "
                     f"guard against evaluating on the groups it learned from; {fix} (nothing was reset)")


def _reset_marked(path: Path, chroma_url: str | None) -> bool:
    """Whether a reset of *this* memory is unfinished: the folder's :data:`RESET_MARKER` is written for the memory
    on disk or for one on a server (whose reset holds and marks the same folder). Without the distinction a
    server reset cut short refused the folder's own memory, with a hint to reset *it* (deleting its rules), and
    the reverse. A marker written before it said which (no ``server`` key) stands for both, as it did."""
    try:
        mark = json.loads((path / RESET_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    if not isinstance(mark, dict) or "server" not in mark:
        return True
    return mark["server"] == (redact_url(chroma_url) if chroma_url else None)


def _reset_running(path: Path) -> str | None:
    """Who is resetting the memory at ``path`` right now (``pid N, since T``), or None when nobody is: its
    :data:`RESET_MARKER` then was left by a reset that was cut short. A live reset holds the folder
    (:func:`hold_exclusive`), whose record names the same process as the marker; a process opening the memory
    meanwhile was told the reset was cut short and to run it again."""
    try:
        mark = json.loads((path / RESET_MARKER).read_text(encoding="utf-8"))
        held = json.loads((path / EXCLUSIVE_NAME).with_suffix(".json").read_text(encoding="utf-8"))
        pid = int(mark["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(held, dict) or held.get("pid") != pid or pid == os.getpid():
        return None
    host = str(held.get("host") or "")
    if host and host != socket.gethostname():
        # a process on another machine (a memory folder on a shared file system): whether it is alive cannot be
        # asked here — checked against this machine's processes, a running reset there read as "cut short"
        return (f"pid {pid} on {host}, since {mark.get('since', '?')}; if that machine stopped, the reset was cut "
                "short and must be run again")
    if not pid_alive(pid):
        return None
    return f"pid {pid}, since {mark.get('since', '?')}"


@contextmanager
def hold_exclusive(path: str | os.PathLike, what: str, location: str | None = None,
                   on_server: bool | None = None) -> Iterator[None]:
    """Hold the memory at ``path`` for one long job (an exploration, an import, a reset) against every other
    such job, in any process on this machine.

    The write lock serialises single batches only; two explorations interleaving their batches would each
    also count the other's groups (an audit found rule statistics doubled, both runs exiting 0). So a
    second job fails at once and names the first, rather than waiting for hours. Re-entrant within a
    process (an exploration that imports or resets holds it already). A function of the folder rather than
    of an open store, so that ``memory reset`` can hold it while it drops collections it cannot open.

    ``on_server``: the memory is on a Chroma server (``location`` names it), whose busy message then does not
    suggest another ``--memory-dir``; None infers it from a ``location`` other than the folder itself."""
    path = Path(path).expanduser().resolve()
    key = str(path)
    with _REGISTRY_LOCK:
        depth = _EXCLUSIVE_HELD.get(key, 0)
        if depth:
            _EXCLUSIVE_HELD[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _REGISTRY_LOCK:
                _EXCLUSIVE_HELD[key] -= 1
        return
    _mkdir(path, location or str(path))
    lock_file = path / EXCLUSIVE_NAME
    # "or use another --memory-dir" is no way on for a memory on a Chroma server: the lock is the local folder's,
    # so a second folder lets two jobs write the one server memory at once (the doubled statistics this lock is
    # for). A location other than the folder itself names such a memory (MemoryStore._folder_location and
    # `memory reset` build it so)
    if on_server is None:
        on_server = location is not None and location != key
    elsewhere = "" if on_server else " or use another --memory-dir"

    def busy(by: str) -> InputError:
        return InputError(f"memory at {location or path} is busy with {by}; wait for it to finish{elsewhere} "
                          f"(lock file {lock_file})")

    with ExitStack() as stack:
        with _unwritable_as_error(path, location or str(path)):  # taking the lock only, not the job inside it
            stack.enter_context(exclusive_lock(lock_file, what, busy=busy))
        with _REGISTRY_LOCK:
            _EXCLUSIVE_HELD[key] = 1
        try:
            yield
        finally:
            with _REGISTRY_LOCK:
                _EXCLUSIVE_HELD.pop(key, None)


_EXPLORED_ID_KEYS = ("group_ids", "calibration_group_ids")  # explored_on.json[splits][split]: the guarded ids


# Ids the code makes are short, printable names ("starter-prior", "mined-r3-…", "<group>:h7:<hash>")
MAX_IMPORTED_ID_CHARS = 256


def _check_imported_id(kind: str, value: str) -> None:
    """An id from an import file is a name, not text: an empty one, one of megabytes (slow to import) or one
    with line breaks or terminal controls (it is printed in tables and quoted in VLM prompts and feedback) is
    refused."""
    import re

    if not value or len(value) > MAX_IMPORTED_ID_CHARS or re.search(r"[\x00-\x1f\x7f-\x9f]", value):
        shown = repr(value[:40]) + ("…" if len(value) > 40 else "")
        raise InputError(f"{kind} id {shown} is not a usable id (1-{MAX_IMPORTED_ID_CHARS} printable characters)")


def _check_encodable(record: Any) -> None:
    """ValueError when a string of an import record cannot be stored: a lone surrogate (``"\\ud800"`` in the
    file's JSON; no export writes one, as neither Chroma nor UTF-8 can hold it). Such a rule text failed the
    import with a tokenizer TypeError, or with Chroma's "surrogates not allowed" after the groups it was explored
    on had been merged: now it is refused, naming the record, before anything is written."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start:exc.end].encode("unicode_escape").decode("ascii")
        raise ValueError(f"it holds a lone surrogate ({bad}), which is not text") from None


def check_side_record(key: str, data: Any) -> None:
    """ValueError when ``data`` is not an exploration record of kind ``key`` (:data:`EXPORTED_FILES`)."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if key != "explored_on":
        return
    splits = data.get("splits", {})
    if not isinstance(splits, dict):
        raise ValueError("'splits' is not an object")
    for split, rec in splits.items():
        if not isinstance(rec, dict):
            raise ValueError(f"split {split!r} is not an object")
        for k in _EXPLORED_ID_KEYS:
            ids = rec.get(k, [])
            if not isinstance(ids, list) or not all(isinstance(g, str) for g in ids):
                raise ValueError(f"split {split!r}: {k} is not a list of group ids")


def _explored_count(rec: dict | None) -> int:
    """Distinct group ids per split of an ``explored_on.json`` record (a group both learned from and calibrated
    on counts once), summed over splits: what export and import report as ``explored_groups``."""
    return sum(len({g for k in _EXPLORED_ID_KEYS for g in r.get(k, [])})
               for r in (rec or {}).get("splits", {}).values())


def merge_explored(ours: dict | None, theirs: dict) -> tuple[dict, int]:
    """``explored_on.json`` guarding both memories' groups: per split, the union of the learned-from and the
    calibration group ids (ours first, in order), other fields ours where both have them. Returns the merged
    record and how many ids it adds to ours. Never shrinks the guard: an import keeps what this memory learned
    from, and adds what the imported contents were learned from."""
    out = copy.deepcopy(ours) if ours else {"splits": {}}
    splits = out.setdefault("splits", {})
    added = 0
    for split, rec in theirs.get("splits", {}).items():
        mine = splits.setdefault(split, {"group_ids": []})
        for key in _EXPLORED_ID_KEYS:
            have = mine.get(key, [])
            known = set(have)
            new = [g for g in dict.fromkeys(rec.get(key, [])) if g not in known]
            if new or key in rec:
                mine[key] = have + new
            added += len(new)
        for k, v in rec.items():
            if k not in _EXPLORED_ID_KEYS:
                mine.setdefault(k, copy.deepcopy(v))
    for k, v in theirs.items():
        if k != "splits":
            out.setdefault(k, copy.deepcopy(v))
    return out, added


def check_export_target(path: str | os.PathLike) -> None:
    """Refuse a folder as the file a memory export writes (checked before the memory is read or opened)."""
    if Path(path).is_dir():
        raise InputError(f"memory export: {path} is a folder; give a file path, e.g. {Path(path) / 'memory.json'}")


def _finite_vector(value, dim: int) -> bool:
    """Whether ``value`` is a list of ``dim`` finite numbers (a stored embedding that can be reused as is)."""
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float range (10**400 written
        # out), which stopped an import with a bare traceback
        return False
    return v.shape == (dim,) and bool(np.all(np.isfinite(v)))


def _why(exc: Exception) -> str:
    """One line for a record that does not validate: each bad field and why (a pydantic error's own text runs
    over several lines, and its first line named neither the field nor the reason)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or 'record'}: {e.get('msg', 'invalid')}"
                             for e in errors())
        except Exception:  # not a pydantic error after all
            pass
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class MemoryStore:
    """Rules + prototypes in Chroma. ``path`` None → ``config.memory_dir()``; ``chroma_url`` → a server (None: the
    one ``HMRCRITIC_CHROMA_URL`` names, if any; ``""``: on disk at ``path`` even where that variable is set).

    A writable store on an empty folder creates both collections and seeds the starter rules
    (``seed_starter``). A read-only store never creates anything: a missing memory is an AssetError.
    """

    @keywords_checked
    def __init__(self, path: str | os.PathLike | None = None, chroma_url: str | None = None,
                 read_only: bool = False, seed_starter: bool = True):
        # wrong types fail here in one line (not as a TypeError from Path or urlparse), before anything is opened
        if path is not None and not isinstance(path, str | os.PathLike):
            raise InputError(f"MemoryStore: path must be a memory folder (str or Path) or None, got "
                             f"{type(path).__name__}")
        if chroma_url is not None and not isinstance(chroma_url, str):
            raise InputError(f"MemoryStore: chroma_url must be a URL string or None, got {type(chroma_url).__name__}")
        if isinstance(path, str) and not path.strip():  # Path("") is the working folder: a memory was made there
            raise InputError("MemoryStore: path is blank: give a memory folder, or None for the configured one")
        self.read_only = bool(read_only)
        # None: HMRCRITIC_CHROMA_URL decides; "" keeps the memory on disk whatever it says (a command's private
        # memory — a snapshot, an evaluation's cache, reproduce's scratch — never goes to a shared server)
        url = config.env_chroma_url() if chroma_url is None else chroma_url
        self.chroma_url = url or None
        if path is not None:  # "" refused, "~" expanded; a server's address is no folder, as HMRCRITIC_MEMORY's
            # is not (password masked)
            where = "MemoryStore: path"
            # only an address with a scheme: what reaches here was mostly a Path (--memory-dir, config.memory_dir(),
            # AgentConfig's str of it), which drops the "./" of ``./run:1``, the spelling the refusal asks for
            self.path = Path(config.not_an_address(where, config.path_text(path, where), bare_too=False)).resolve()
        else:
            self.path = config.memory_dir().resolve()
        self._key = str(self.path)
        self._cols: dict[str, Any] = {}
        self._gen_seen = -1
        self._epoch_seen = _EPOCH.get(self._key, 0)
        self._writes = 0
        self._version_cache: tuple[tuple[int, int, int], str] | None = None
        self._claim: weakref.finalize | None = None  # this store's count in _CLAIMS, while it holds one
        _settle_released()  # stores collected since the last open: their folders' Chroma systems stop now
        self.rules = RuleMemory(self)
        self.prototypes = PrototypeMemory(self)
        try:
            self._open(seed_starter)
        except BaseException:
            # what the open took is given back now: a store that failed to open is referenced only by the
            # exception's traceback and its own rule memory, so its claim (and with it the folder's Chroma system,
            # database file and threads) stayed until the garbage collector came by: a long process retrying an
            # open that fails (a memory reset half-way, another embedding) kept one more system open per try
            with suppress(Exception):  # the open's own error is the one to hear about
                self.close()
            raise

    def _open(self, seed_starter: bool) -> None:
        """Connect (server) or start Chroma on the folder, check the collections and create what is missing."""
        if self.chroma_url:
            self._client = _http_client(self.chroma_url)
            self._claim_path()
        else:
            if self.path.exists() and not self.path.is_dir():
                raise InputError(f"a file is where a folder is needed: {self.path} (a memory is a folder)")
            if self.read_only and not holds_memory(self.path):
                raise AssetError(f"no memory at {self.path} (nothing to open read-only); create one with "
                                 f"{self._hint('reset --yes')} or by exploring")
            _mkdir(self.path, self.location)
        if self._key not in _RESETTING and _reset_marked(self.path, self.chroma_url):
            running = _reset_running(self.path)
            if running:
                raise AssetError(f"memory at {self.location} is being reset right now ({running}); run again "
                                 "once it is done")
            raise AssetError(f"memory at {self.location}: a reset was cut short (its rules, prototypes and "
                             f"exploration records may not belong together); run {self._hint('reset --yes')} "
                             "again")
        with self._local_lock():
            if not self.chroma_url:
                self._claim_path()
                self._client = _persistent_client(self._key, read_only=self.read_only)
                self._gen_seen = _GENERATION.get(self._key, 0)
            missing = self._open_collections()
        unfinished = not self.chroma_url and (self.path / CREATE_MARKER).exists()
        if unfinished and self.read_only:
            raise AssetError(f"memory at {self.location} was being created and has not finished (its process was "
                             "stopped, or is still at it): its starter rules may be missing; open it writable "
                             "once (run the command that created it again) or run "
                             f"{self._hint('reset --yes')}")
        if missing or unfinished:
            if self.read_only and self.chroma_url and set(missing) == set(COLLECTIONS):
                raise AssetError(f"no hmrcritic memory on the Chroma server at {self.location} (nothing to open "
                                 f"read-only); create one with {self._hint('reset --yes')} or by exploring")
            if self.read_only:
                raise AssetError(f"memory at {self.location} lacks collection(s) {missing}; it is not an "
                                 f"hmrcritic memory or was reset half-way (run {self._hint('reset --yes')})")
            with self._write():
                if self._open_collections() or (self.path / CREATE_MARKER).exists():
                    self._create_missing(seed_starter)

    # ---- plumbing ---------------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return redact_url(self.chroma_url) if self.chroma_url else str(self.path)

    def __repr__(self) -> str:
        # a notebook showed <hmrcritic.memory.store.MemoryStore object at 0x…>; the location is scrubbed (a
        # server URL's password is masked)
        return f"MemoryStore({self.location!r}{', read_only=True' if self.read_only else ''})"

    @property
    def _folder_location(self) -> str:
        """The memory as messages about its folder name it: a server memory's writers on this machine take their
        lock (and exploration keeps its records) in the local folder, which an unwritable one was blamed on the
        server for ("memory at http://host:8000 is not writable (Read-only file system)", "cannot create the
        memory folder http://host:8000")."""
        if not self.chroma_url:
            return self.location
        return f"{self.location} (its folder on this machine, {self.path}, for the write lock and records)"

    def _hint(self, command: str) -> str:
        """```hmrcritic memory COMMAND``` naming this memory (see :func:`cli_hint`)."""
        return cli_hint(command, self.path, self.chroma_url)

    def _generation(self) -> int:
        return _GENERATION.get(self._key, 0) if not self.chroma_url else 0

    def _content_key(self) -> tuple[int, int, int]:
        """Changes whenever content this store may have cached could have changed (in this process)."""
        return (self._generation(), _EPOCH.get(self._key, 0), self._writes)

    def _ensure_current(self) -> None:
        """Re-fetch the client/collections when this process reopened Chroma on our path since we did, and the
        collections when a write batch in this process (through any store on the path) ended since we fetched
        them: a fetched collection's metadata (score calibration, prototype content sum) is a snapshot, so a
        second store on the folder otherwise kept reporting the old calibration and version."""
        epoch = _EPOCH.get(self._key, 0)
        if epoch != self._epoch_seen:
            self._cols = {}
            self._epoch_seen = epoch
        if self.chroma_url:
            if self._claim is None or not self._claim.alive:  # closed: its client is gone, so a new one
                self._client = _http_client(self.chroma_url)
                self._cols = {}
                self._claim_path()
            return
        gen = self._generation()
        if gen != self._gen_seen:
            self._claim_path()
            self._client = _persistent_client(self._key, read_only=self.read_only)
            self._cols = {}
            self._gen_seen = gen

    def _open_collections(self) -> list[str]:
        """Fetch and check both collections; returns the names that do not exist."""
        from chromadb.errors import NotFoundError

        missing = []
        for name, (emb_id, dim) in COLLECTIONS.items():
            try:
                col = self._client.get_collection(name, embedding_function=None)
            except (NotFoundError, ValueError):
                missing.append(name)
                continue
            meta = col.metadata or {}
            if meta.get("embedding_id") != emb_id or meta.get("embedding_dim") != dim:
                raise AssetError(
                    f"memory at {self.location}: collection {name!r} was built with embedding "
                    f"{meta.get('embedding_id')!r} (dim {meta.get('embedding_dim')}), this hmrcritic uses "
                    f"{emb_id!r} (dim {dim}); rebuild it with {self._hint('reset --yes')} (export first "
                    f"with the old version to keep rules: {self._hint('export FILE')})"
                )
            self._cols[name] = _Held(col if self.chroma_url else _DiskReads(col, self.path), self)
        return missing

    def _create_missing(self, seed_starter: bool) -> None:
        """Create the missing collections and seed the starter rules, between writing and removing
        :data:`CREATE_MARKER` (embedded stores): a creation cut short is finished by the next writable open,
        which adds the starter rules that are not in yet."""
        marker = None if self.chroma_url else self.path / CREATE_MARKER
        finishing = marker is not None and marker.exists()
        if marker is not None and not finishing and seed_starter and RULES_COLLECTION not in self._cols:
            atomic_write_json(marker, {"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                 time.gmtime())})
        created_rules = False
        for name, (emb_id, dim) in COLLECTIONS.items():
            if name in self._cols:
                continue
            col = self._client.create_collection(
                name,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embedding_id": emb_id, "embedding_dim": dim, "hmrcritic_schema": SCHEMA_VERSION},
                embedding_function=None,
            )
            self._cols[name] = _Held(col if self.chroma_url else _DiskReads(col, self.path), self)
            created_rules |= name == RULES_COLLECTION
        if (created_rules and seed_starter) or finishing:
            from hmrcritic.memory.starter_rules import starter_embeddings, starter_rules

            have = {r.rule_id for r in self.rules.all(include_retired=True)} if finishing else set()
            rules = [r for r in starter_rules() if r.rule_id not in have]
            if rules:
                self.rules.add(rules, embeddings=starter_embeddings(rules))
        if marker is not None:
            marker.unlink(missing_ok=True)

    def _collection(self, name: str):
        self._ensure_current()
        if name not in self._cols:
            missing = self._open_collections()
            if name in missing:
                raise AssetError(f"memory at {self.location} lacks collection {name!r}; run "
                                 f"{self._hint('reset --yes')}")
        return self._cols[name]

    def _forget_fetched(self) -> None:
        """Drop the collections, rules and version this store fetched: the next use fetches them anew."""
        self._cols = {}
        self._writes += 1
        self.rules.invalidate()

    def _claim_path(self) -> None:
        """Count this embedded store among the users of its folder's Chroma system (:data:`_CLAIMS`), once until
        it is closed or collected; a server store's client is its own, closed then."""
        if self._claim is not None and self._claim.alive:
            return
        if self.chroma_url:
            self._claim = weakref.finalize(self, _RELEASED.append, getattr(self._client, "_target", self._client))
            return
        with _REGISTRY_LOCK:
            _CLAIMS[self._key] = _CLAIMS.get(self._key, 0) + 1
        self._claim = weakref.finalize(self, _RELEASED.append, self._key)

    def _local_lock(self) -> threading.RLock:
        """Per-path, per-process lock. Every Chroma call of every store on this path holds it: a write
        batch reopens the process's Chroma system, which must not happen under another thread's read."""
        with _REGISTRY_LOCK:
            return _PROCESS_LOCKS.setdefault(self._key, threading.RLock())

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write batch: refuse when frozen, take the file lock, start from what is on disk.

        Re-entrant: nested batches (``add`` inside ``reset``) share the outer lock and reopen only once, also
        when the nested one goes through another store on the same folder (the depth is per folder). A folder
        that cannot be written is one :class:`UnwritableMemoryError` naming it."""
        if self.read_only:
            raise ReadOnlyMemoryError(f"memory at {self.location} is open read-only (frozen); "
                                      "writes are refused")
        with self._local_lock():
            depth = _WRITE_DEPTH.get(self._key, 0)
            if depth:
                _WRITE_DEPTH[self._key] = depth + 1
                try:
                    yield
                finally:
                    _WRITE_DEPTH[self._key] -= 1
                    if self._key in _SNAPSHOTS:
                        _SNAPSHOTS[self._key] = True
                    # every store on the folder drops what it cached, not only this one: the outer batch may go
                    # through another store here, which read the rules (and version) before this nested write and,
                    # keeping them, wrote the counts of before back over it (a use recorded here was lost)
                    with _REGISTRY_LOCK:
                        _EPOCH[self._key] = _EPOCH.get(self._key, 0) + 1
                    # a version read later inside the outer batch must see this write (exploration logs it)
                    self._writes += 1
                return
            _mkdir(self.path, self._folder_location)
            lock = _acquire_write_lock(self.path, self._folder_location)
            _WRITE_DEPTH[self._key] = 1
            seq = _read_seq(self.path)
            try:
                with _unwritable_as_error(self.path, self.location, embedded=not self.chroma_url):
                    if not self.chroma_url:
                        if seq < 0 or _SEQ_SEEN.get(self._key) != seq:
                            self._claim_path()
                            self._client = _persistent_client(self._key, reopen=True)
                            self._gen_seen = self._generation()
                            self._cols = {}
                        self._ensure_current()
                        self._open_collections()
                    else:
                        # the server's collections as they are now, as a batch on disk reopens the folder: with
                        # the ones fetched at open, another machine's replaced prototype was missing from the
                        # running content sum (the version disagreed with the content for good), and after
                        # its `memory reset` every write failed with Chroma's bare "Collection [id] does not exist"
                        self._cols = {}
                        self._ensure_current()  # a closed server store: a new client before its first call
                        self._open_collections()
                    self.rules.invalidate()
                    yield
            finally:
                _WRITE_DEPTH.pop(self._key, None)
                self._writes += 1
                with _REGISTRY_LOCK:
                    _EPOCH[self._key] = _EPOCH.get(self._key, 0) + 1
                self.rules.invalidate()
                try:
                    with _unwritable_as_error(self.path, self._folder_location):
                        _SEQ_SEEN[self._key] = _bump_seq(self.path, seq)
                finally:
                    _release_write_lock(self.path, lock)

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Read several parts of the memory that must belong together (an export) as one state: hold the write
        lock and start from what is on disk. An exploration applies a batch's rules, prototypes, calibration and
        progress record inside one write batch; a reader between them copied half a batch, with a progress
        record saying it was done (a copy resumed from that never learns the rest). Shares a write batch this
        process is in; a read-only store whose folder cannot take the lock reads without it (nobody can write
        there either)."""
        with self._local_lock():
            if _WRITE_DEPTH.get(self._key, 0):
                yield
                return
            lock = None
            try:
                # a server's writers on this machine lock this folder (_write); none made it: none wrote here
                if not (self.chroma_url and not self.path.is_dir()):
                    lock = _acquire_write_lock(self.path, self._folder_location)
            except UnwritableMemoryError:
                if not self.read_only:
                    raise
            # a write batch nested in here (another store of this process on the folder) shares the lock
            _WRITE_DEPTH[self._key] = 1
            _SNAPSHOTS[self._key] = False
            try:
                self._refresh_locked()  # collection metadata (calibration, content sum) is a snapshot from open
                yield
            finally:
                _WRITE_DEPTH.pop(self._key, None)
                try:
                    if _SNAPSHOTS.pop(self._key, False):
                        with _unwritable_as_error(self.path, self._folder_location):
                            _SEQ_SEEN[self._key] = _bump_seq(self.path, _read_seq(self.path))
                finally:
                    if lock is not None:
                        _release_write_lock(self.path, lock)

    def _check_dim(self, name: str, vecs: np.ndarray) -> None:
        dim = COLLECTIONS[name][1]
        if vecs.ndim != 2 or vecs.shape[1] != dim:
            raise InputError(f"{name}: vectors must have shape (n, {dim}), got {vecs.shape}")

    def _upsert(self, name: str, ids: list[str], vecs: np.ndarray, metas: list[dict], docs: list[str],
                progress: bool = False) -> None:
        vecs = np.asarray(vecs, dtype=np.float32)
        self._check_dim(name, vecs)
        col = self._collection(name)
        try:
            batch = min(int(self._client.get_max_batch_size()), 5000)
        except Exception:
            batch = 1000
        starts = range(0, len(ids), batch)
        if progress and len(ids) > batch:
            from rich.console import Console
            from rich.progress import track

            # on stderr, gone when done: on stdout the bar's last line went first into `memory import --json`'s
            # output (rich prints it even to a pipe), and a script's json.loads of a big import failed on it
            starts = track(starts, description=f"writing {name}", console=Console(stderr=True), transient=True)
        for s in starts:
            e = s + batch
            col.upsert(ids=ids[s:e], embeddings=vecs[s:e], metadatas=metas[s:e], documents=docs[s:e])

    def _get_all(self, name: str, include: list[str], ids: list[str] | None = None) -> dict[str, list]:
        """``collection.get`` paged (large collections) with lists for every included field."""
        with self._local_lock():
            return self._get_all_locked(name, include, ids)

    def _get_all_locked(self, name: str, include: list[str], ids: list[str] | None) -> dict[str, list]:
        col = self._collection(name)
        out: dict[str, list] = {"ids": [], **{k: [] for k in include}}
        if ids is not None:
            # each id once: Chroma refuses a repeated id in one get (DuplicateIDError), which ended
            # ``prototypes.get(["p", "p"])`` and ``rules.embeddings`` of a repeated id; the records found are the same
            ids = list(dict.fromkeys(ids))
            chunks = [dict(ids=ids[s:s + _PAGE]) for s in range(0, len(ids), _PAGE)]
        else:
            n = col.count()
            chunks = [dict(limit=_PAGE, offset=s) for s in range(0, n, _PAGE)]
        for ch in chunks:
            got = col.get(include=include, **ch)
            out["ids"].extend(got["ids"])
            for k in include:
                vals = got.get(k)
                out[k].extend(list(vals) if vals is not None else [None] * len(got["ids"]))
        return out

    # ---- public -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """See other processes' writes: reopen Chroma from disk (embedded store) and drop caches."""
        with self._local_lock():
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        # collections re-fetched on a server too (lazily, on next use): a fetched collection's metadata (score
        # calibration, prototype content sum) is a snapshot, so a refresh that kept it missed another machine's
        # calibration, and an upsert there that kept the prototype count left the version stale
        self._cols = {}
        if not self.chroma_url:
            self._claim_path()
            self._client = _persistent_client(self._key, reopen=True, read_only=self.read_only)
            self._gen_seen = self._generation()
            self._open_collections()
        self._writes += 1  # other processes may have written: drop the cached version too
        self.rules.invalidate()

    def version(self) -> str:
        """Content hash of all rules (ids, text, tags, statistics, condition, retired) and prototypes (ids,
        scores), independent of insertion order and stable across processes. 16 hex digits.

        Cached until this store writes or :meth:`refresh` runs (the agent asks for it per group, and hashing
        100k prototypes reads all their metadata)."""
        key = self._content_key()
        if self._version_cache is None or self._version_cache[0] != key:
            self._version_cache = (key, self._compute_version())
        return self._version_cache[1]

    def _compute_version(self, full: bool = False) -> str:
        rules = sorted(rule_key(r) for r in self.rules.all(include_retired=True))
        total, count = self._proto_sum(full=full)
        content: dict[str, Any] = {"rules": rules, "prototypes": [f"{total:032x}", count]}
        cal = self.calibration()
        if cal is not None:  # absent → the same version as before calibrations existed
            # error_metric PA-MPJPE (every calibration before session 29 was) → the same version as before the field
            content["calibration"] = cal.model_dump(
                mode="json", exclude={"error_metric"} if cal.error_metric == "pa_mpjpe" else None)
        blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def verify_version(self) -> bool:
        """Recompute the prototype part of the version from every record and compare with the running
        sum kept in collection metadata. They should never differ: a prototype write marks the stored sum
        unknown before its first record and stores the new one after its last (:meth:`PrototypeMemory.add`), so
        one cut short leaves a sum the next version rescans; a write by something else than ``add`` would not."""
        return self._compute_version(full=True) == self._compute_version()

    # Prototypes can number 100k+, so their part of the version is an order-independent running sum of
    # per-record digests, kept with its record count in the collection metadata and updated under the
    # write lock by every prototype write. A missing or stale sum (count mismatch) falls back to a scan.
    def _proto_sum(self, full: bool = False) -> tuple[int, int]:
        with self._local_lock():
            col = self._collection(PROTOTYPES_COLLECTION)
            meta, count = col.metadata or {}, col.count()
            if not full and isinstance(meta.get("content_sum"), str) and meta.get("content_count") == count:
                return int(meta["content_sum"], 16), count
            got = self._get_all_locked(PROTOTYPES_COLLECTION, ["metadatas"], None)
            return proto_digest(got["ids"], got["metadatas"]), count

    def _store_proto_sum(self, total: int, count: int) -> None:
        """Inside a write batch: record the running sum and the record count it accounts for in Chroma."""
        col = self._collection(PROTOTYPES_COLLECTION)
        meta = dict(col.metadata or {})
        meta.update(content_sum=f"{total:032x}", content_count=int(count))
        col.modify(metadata=meta)
        self._cols.pop(PROTOTYPES_COLLECTION, None)  # re-fetch so the cached metadata is current

    # ---- score calibration: the explored rule set's exchange rate of points into error (ScoreCalibration) --
    # Kept in the rules collection's metadata, so it travels with the memory on disk, in a Chroma server, in a
    # frozen copy and in exports, and enters the memory version.
    def calibration(self) -> ScoreCalibration | None:
        """The stored score calibration, or None (a memory that was never explored with the builtin judge)."""
        with self._local_lock():
            raw = (self._collection(RULES_COLLECTION).metadata or {}).get(CALIBRATION_KEY)
        if not raw:
            return None
        try:
            return ScoreCalibration.model_validate_json(raw)
        except ValueError as exc:
            raise AssetError(f"memory at {self.location}: its score calibration is unreadable ({exc})".splitlines()[0]
                             + f"; clear it with {self._hint('calibration --clear')} (exploring fits a new one)"
                             ) from exc

    def set_calibration(self, calibration: ScoreCalibration | None) -> None:
        """Store (or with None, remove) the score calibration; one atomic metadata write under the lock."""
        with self._write():
            col = self._collection(RULES_COLLECTION)
            meta = dict(col.metadata or {})
            meta.pop(CALIBRATION_KEY, None)
            if calibration is not None:
                meta[CALIBRATION_KEY] = calibration.model_dump_json()
            col.modify(metadata=meta)
            self._cols.pop(RULES_COLLECTION, None)  # re-fetch so the cached metadata is current

    def rules_fingerprint(self) -> str:
        """Hash of what makes the builtin judge score the way it does: the active rules' ids and conditions
        (not their texts or statistics). A calibration fitted for another fingerprint is stale."""
        keys = sorted((r.rule_id, r.condition.model_dump_json() if r.condition is not None else "")
                      for r in self.rules.all())
        return hashlib.sha256(json.dumps(keys).encode("utf-8")).hexdigest()[:12]

    def stats(self) -> dict:
        rules = self.rules.all(include_retired=True)
        active = [r for r in rules if not r.retired]
        return {
            "location": self.location,
            "backend": "http" if self.chroma_url else "persistent",
            "read_only": self.read_only,
            "version": self.version(),
            "rules": len(active),
            "rules_retired": len(rules) - len(active),
            "rules_by_origin": {o: sum(r.origin == o for r in active) for o in ("starter", "mined", "user")},
            "rule_uses": sum(r.n_used for r in active),
            "rule_successes": sum(r.n_success for r in active),
            "prototypes": self.prototypes.count(),
            "embeddings": {name: {"id": e, "dim": d} for name, (e, d) in COLLECTIONS.items()},
            "calibration": self._calibration_stats(),
        }

    def _calibration_stats(self) -> dict | None:
        cal = self.calibration()
        if cal is None:
            return None
        return {**cal.model_dump(mode="json"), "stale": cal.rules_fingerprint != self.rules_fingerprint()}

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold this memory for one long job (an exploration, an import, a reset) against every other such job,
        in any process on this machine (:func:`hold_exclusive`)."""
        if self.read_only:
            raise ReadOnlyMemoryError(f"memory at {self.location} is open read-only (frozen); {what} writes to it")
        with hold_exclusive(self.path, what, location=self._folder_location, on_server=bool(self.chroma_url)):
            yield

    def _side_record(self, key: str) -> dict | None:
        """The exploration record ``key`` of :data:`EXPORTED_FILES` beside the collections, or None when absent;
        an unreadable one is an InputError (an export without it would drop what it guards)."""
        f = self.path / EXPORTED_FILES[key]
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
            check_side_record(key, data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep, which
            # came out of `memory export` and every import into this memory as a traceback (the other readers of
            # these records turn it into their clear error)
            raise InputError(f"{f}: unreadable exploration record ({str(exc).splitlines()[0]}); it travels with "
                             "the memory's exports and guards against evaluating on explored groups, so fix it or "
                             "move it aside knowingly") from exc
        return data

    def reset(self, seed_starter: bool = True) -> None:
        """Delete both collections and recreate them (seeded with the starter rules unless told not to)."""
        from chromadb.errors import NotFoundError

        with self.exclusive("a memory reset"):
            # a folder where an exploration record goes cannot be unlinked: the reset stopped half-way, the
            # collections deleted and the memory marked unfinished, and every later reset stopped at it again
            folders = [f for f in (self.path / n for n in EXPLORE_FILES) if f.is_dir() and not f.is_symlink()]
            if folders:
                raise InputError(f"{folders[0]}: a folder where the memory keeps an exploration record; move it "
                                 "away, then reset again (nothing was deleted)")
            with resetting(self.path, self.chroma_url or ""), self._write():
                for name in COLLECTIONS:
                    with suppress(NotFoundError, ValueError):
                        self._client.delete_collection(name)
                self._cols = {}
                # what exploration recorded about the contents goes with them: a kept progress record would make
                # the next exploration skip every round as already done, into an empty memory
                for name in EXPLORE_FILES:
                    (self.path / name).unlink(missing_ok=True)
                self._create_missing(seed_starter)

    def export_json(self, path: str | os.PathLike) -> dict:
        """Write every rule and prototype (with embeddings) to a JSON file, with the calibration and the
        exploration records of :data:`EXPORTED_FILES`; returns the counts."""
        check_export_target(path)
        with self._snapshot():
            return self._export_json(path)

    def _export_json(self, path: str | os.PathLike) -> dict:
        data = {
            "format": EXPORT_FORMAT,
            "schema": SCHEMA_VERSION,
            "version": self.version(),
            "embeddings": {name: {"id": e, "dim": d} for name, (e, d) in COLLECTIONS.items()},
            "rules": self.rules.export_records(),
            "prototypes": self.prototypes.export_records(),
        }
        cal = self.calibration()
        if cal is not None:
            data["calibration"] = cal.model_dump(mode="json")
        # read after the contents: exploration records a batch's groups before it learns from them (and its
        # progress after), so an exploration writing meanwhile leaves the guard over-, never under-stated
        side = {key: rec for key in EXPORTED_FILES if (rec := self._side_record(key)) is not None}
        data.update(side)
        atomic_write_json(path, data, indent=None)
        # distinct ids per split: a later round may learn from groups a calibration was fitted on (in both lists)
        explored = _explored_count(side.get("explored_on"))
        return {"rules": len(data["rules"]), "prototypes": len(data["prototypes"]),
                "version": data["version"], "explored_groups": explored}

    def import_json(self, path: str | os.PathLike, overwrite: bool = False) -> dict:
        """Merge an export into this memory.

        New rule ids are added; a rule id already present is replaced only when the file's copy has more
        uses (or with ``overwrite``). Prototypes are upserted by id: ``prototypes`` counts the file's,
        ``prototypes_added`` those new here, ``prototypes_replaced`` those whose id was here already. Stored
        vectors are reused when the file's embedding identity matches ours, otherwise rule texts are re-embedded
        (prototype vectors cannot be recomputed without joints, so a pose-embedding mismatch is an error).

        Exploration records (:data:`EXPORTED_FILES`; an export written before they travelled has none): the
        groups the file's contents were learned from join this memory's ``explored_on.json`` (a union, written
        before the contents, so evaluation stays refused on them); the file's exploration progress is taken
        when this memory has none (a copy resumes like its source), else this memory keeps its own."""
        with self.exclusive("a memory import"):
            return self._import_json(path, overwrite)

    def _import_json(self, path: str | os.PathLike, overwrite: bool) -> dict:
        path = Path(path)
        # an exploration batch killed while it was being written (agent/explore.py's PENDING_FILE): the next
        # explore re-writes its rule records whole, which undid an import made in between (its rule counts, its
        # rules' fields) without a word
        if (self.path / "explore_pending.json").exists():
            raise InputError(f"memory import: {self.location} holds an exploration batch that was interrupted while "
                             "it was being written (explore_pending.json); the next `hmrcritic explore` on this "
                             "memory finishes it first — run one, then import")
        try:
            # bytes, as the keypoint reader does: json detects UTF-8 with a BOM and UTF-16/32 (an export re-saved by
            # a Windows editor or PowerShell's `>`), which read_text("utf-8") refused as "Unexpected UTF-8 BOM"
            data = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise InputError(f"memory import: no file {path}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"memory import: {path} is not readable JSON ({exc})".splitlines()[0]) from exc
        except ValueError:  # an integer of over 4,300 digits: Python's int-parsing limit, not a JSONDecodeError
            raise InputError(f"memory import: {path} is not a memory export (holds a number thousands of digits "
                             "long)") from None
        except RecursionError:  # nested deeper than the parser goes: no export is
            raise InputError(f"memory import: {path} is not a memory export (JSON nested too deeply)") from None
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise InputError(f"memory import: {path} is not an hmrcritic memory export (format field)")
        if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise InputError(f"memory import: {path} has schema {data.get('schema')!r}; this hmrcritic reads schema "
                             f"{SCHEMA_VERSION} (export it again with a matching version)")
        emb = data.get("embeddings", {})
        if not isinstance(emb, dict):
            raise InputError(f"memory import: {path}: 'embeddings' is not an object (nothing was imported)")
        same_text = emb.get(RULES_COLLECTION) == {"id": TEXT_EMBEDDING_ID, "dim": TEXT_DIM}
        pose_ok = emb.get(PROTOTYPES_COLLECTION) == {"id": POSE_EMBEDDING_ID, "dim": POSE_DIM}
        if data.get("prototypes") and not pose_ok:
            raise InputError(f"memory import: {path} has prototypes embedded with "
                             f"{emb.get(PROTOTYPES_COLLECTION)}, this memory uses {POSE_EMBEDDING_ID} "
                             f"({POSE_DIM})")
        # each record is named in the message below; a list that is none was named as the record last looked at
        # ("malformed record calibration: TypeError: 'NoneType' object is not iterable" for "rules": null)
        for key in ("rules", "prototypes"):
            if not isinstance(data.get(key, []), list):
                raise InputError(f"memory import: {path}: {key!r} is not a list of records (nothing was imported)")
        where = "calibration"
        # An export written before conditions carried `hard` (same schema number) reads as hard=False: a starter
        # hard constraint imported with more uses replaced ours soft, and maintenance then retired it. A starter
        # rule's condition without the key keeps the starter's flag.
        from hmrcritic.memory.starter_rules import starter_rules

        starter_hard = {r.rule_id for r in starter_rules() if r.hard}
        try:
            rules = []
            for i, r in enumerate(data.get("rules", [])):
                where = f"rules[{i}]"
                if not isinstance(r, dict):
                    raise ValueError(f"a {type(r).__name__}, not a JSON object")
                r = {k: v for k, v in r.items() if k != "embedding"}
                _check_encodable(r)
                cond = r.get("condition")
                if r.get("rule_id") in starter_hard and isinstance(cond, dict) and "hard" not in cond:
                    r["condition"] = {**cond, "hard": True}
                rules.append((Rule.model_validate(r), data["rules"][i].get("embedding")))
            protos = []
            for i, p in enumerate(data.get("prototypes", [])):
                where = f"prototypes[{i}]"
                _check_encodable(p)
                protos.append(Prototype.model_validate(p))
            where = "calibration"
            cal = ScoreCalibration.model_validate(data["calibration"]) if data.get("calibration") else None
        except Exception as exc:
            raise InputError(f"memory import: {path} has a malformed record {where}: {_why(exc)}") from exc
        side = {key: data[key] for key in EXPORTED_FILES if data.get(key) is not None}
        for key, rec in side.items():
            try:
                check_side_record(key, rec)
            except ValueError as exc:
                raise InputError(f"memory import: {path} has a malformed {key} record ({exc}) (nothing was "
                                 "imported)") from None
        ours_explored = self._side_record("explored_on")  # unreadable: refused before anything is written
        # Check every record before the first write: a bad record late in the file must not leave the rules
        # before it merged (an import is all or nothing).
        try:
            # a prototype's empty id is derived on add (CONTRACTS: proto_id "" → derived), as for one added in code:
            # a hand-written or another tool's file without ids was refused as "an empty id"
            for kind, rid in [*(("rule", r.rule_id) for r, _ in rules),
                              *(("prototype", p.proto_id) for p in protos if p.proto_id != "")]:
                _check_imported_id(kind, rid)
            # a condition on an unknown measure or axis refused as RuleMemory.add refuses it (stored, it never fired)
            checked = [self.rules.check_condition(self.rules.validate(r)) for r, _ in rules]
            proto_ids, _ = self.prototypes.check(protos)
        except InputError as exc:
            raise InputError(f"memory import: {path}: {exc} (nothing was imported)") from None
        ids = [r.rule_id for r in checked]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InputError(f"memory import: {path} holds rule id(s) {dup[:5]} more than once (nothing was imported)")
        rules = [(r, e if _finite_vector(e, TEXT_DIM) else None) for r, (_, e) in zip(checked, rules, strict=True)]
        counts = {"rules_added": 0, "rules_updated": 0, "rules_skipped": 0, "prototypes": 0, "prototypes_added": 0,
                  "prototypes_replaced": 0}
        with self._write():
            explored_added = 0
            if "explored_on" in side:  # the guard first: an import cut short is over-guarded, never under
                # read again under the lock: an exploration of another process that wrote the guard between the
                # check above and this lock had its groups dropped by a merge of the stale copy
                ours_explored = self._side_record("explored_on")
                merged, changed = merge_explored(ours_explored, side["explored_on"])
                if changed:
                    atomic_write_json(self.path / EXPORTED_FILES["explored_on"], merged)
                explored_added = _explored_count(merged) - _explored_count(ours_explored)
            current = {r.rule_id: r for r in self.rules.all(include_retired=True)}
            new = [(r, e) for r, e in rules if r.rule_id not in current]
            upd = [r for r, _ in rules
                   if r.rule_id in current and (overwrite or r.n_used > current[r.rule_id].n_used)]
            counts["rules_skipped"] = len(rules) - len(new) - len(upd)
            if new:
                vecs = None
                if same_text and all(e is not None for _, e in new):
                    vecs = np.asarray([e for _, e in new], dtype=np.float32)
                self.rules.add([r for r, _ in new], embeddings=vecs)
            if upd:
                self.rules.update(upd)
            # which of them this memory holds already (upserted over: a second import of one file reported every
            # prototype again as imported, as if the memory had gained them)
            present = set(self._get_all(PROTOTYPES_COLLECTION, include=[], ids=proto_ids)["ids"]) if protos else set()
            if protos:
                self.prototypes.add(protos, progress=True)
            # a calibration belongs to the rule set it was fitted for: take the file's when this memory has
            # none (or with overwrite); otherwise keep ours
            take_cal = cal is not None and (overwrite or self.calibration() is None)
            if take_cal:
                self.set_calibration(cal)
            progress_file = self.path / EXPORTED_FILES["explore_progress"]
            take_progress = "explore_progress" in side and not progress_file.exists()
            if take_progress:  # after the contents, as exploration writes it after a batch
                atomic_write_json(progress_file, side["explore_progress"])
            counts.update(rules_added=len(new), rules_updated=len(upd), prototypes=len(protos),
                          prototypes_added=len(protos) - len(present), prototypes_replaced=len(present),
                          calibration=bool(take_cal), explored_groups=explored_added,
                          explore_progress=take_progress)
        return counts

    @staticmethod
    def drop_collections(path: str | os.PathLike, names: list[str] | None = None,
                         chroma_url: str | None = None) -> None:
        """Delete collections of an embedded memory without opening it as a MemoryStore (so it works on a
        memory whose embedding identity no longer matches: what ``memory reset`` must do). Takes the lock.

        With ``chroma_url`` the collections are dropped on that server instead: a server memory can mismatch
        just the same, and opening it as a MemoryStore (what a reset did) fails on the very check whose
        error message tells the user to reset."""
        from chromadb.errors import NotFoundError

        if chroma_url:
            client = _http_client(chroma_url)
            try:
                for name in names or list(COLLECTIONS):
                    with suppress(NotFoundError, ValueError):
                        client.delete_collection(name)
            finally:
                _close_http_client(client)  # as a closed store's (see _RELEASED)
            return
        path = Path(path).expanduser().resolve()
        if not holds_memory(path):
            return
        lock = _acquire_write_lock(path, str(path))
        try:
            with _unwritable_as_error(path, str(path)):
                client = _persistent_client(str(path), reopen=True)
                for name in names or list(COLLECTIONS):
                    with suppress(NotFoundError, ValueError):
                        client.delete_collection(name)
                _SEQ_SEEN[str(path)] = _bump_seq(path, _read_seq(path))
        finally:
            _release_write_lock(path, lock)

    def close(self) -> None:
        """Drop references and this store's claim on its folder's Chroma system, which stops (its database
        connections, vector index and threads are freed) once no other store of this process uses the folder.
        A store garbage-collected without closing gives its claim up too. Used again, it opens the folder anew.

        What others tied to the store's life (``weakref.finalize``) ends here too: a frozen copy
        (``explore.frozen_copy``) holds its snapshot folder against ``runs prune`` until its store goes, and
        closing left that descriptor, and the client's database file, open until the garbage collector came by
        (a notebook evaluating round after round kept one snapshot held, and two files open, per round)."""
        self._cols = {}
        self.rules.invalidate()
        for fin in _finalizers_of(self):
            fin()  # each runs once: the collector finds nothing left to do
        if self._claim is not None and not self._claim.alive:
            self._gen_seen = -1  # the next use opens the folder again, and claims it
            self._client = None  # its Chroma system keeps the database file open while referenced
        _settle_released()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finalizers_of(obj: object) -> list[weakref.finalize]:
    """The live ``weakref.finalize`` callbacks registered on ``obj`` (CPython keeps them in a class registry;
    none where it does not)."""
    registry = getattr(weakref.finalize, "_registry", None) or {}
    out = []
    for fin, info in list(registry.items()):
        with suppress(Exception):
            if info.weakref() is obj and fin.alive:
                out.append(fin)
    return out

