"""What the agent keeps under ``runs_dir()``, how big it is, and pruning what is old.

Every critique leaves a checkpoint thread (``checkpoints.sqlite``), a run folder of arrays and renders
(``groups/<id>``) and a trace (``traces/<run>.jsonl``); exploration and evaluation add read-only memory
snapshots (``frozen-memory/``) and result caches (``evaluate/``). Throwaway critiques no longer keep theirs
(``critique_group(keep=False)``), but a user's own critiques, and everything an older version wrote,
accumulate: one workstation had 32 GB of checkpoints after a few weeks of evaluation runs.
:func:`prune_runs` removes what is older than a cutoff — a checkpoint thread goes with its run folder (a
thread whose folder is gone cannot be resumed: its inputs lived there) — then compacts the SQLite file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from hmrcritic import config as hconfig
from hmrcritic.errors import AssetError, InputError
from hmrcritic.io import newest_mtime

log = logging.getLogger(__name__)

DAY_S = 86_400.0
LOCK_BATCH = 256  # run folders prune holds locked at once


def _tree_bytes(path: Path) -> int:
    """Bytes of the files in ``path`` (or of the file ``path``); what goes while it is listed counts as gone.

    Exploration and evaluation loops remove each group's run folder as soon as they have read it (``discard_run``)
    and SQLite removes its write-ahead log when the last connection closes: ``rglob`` then ``stat`` raised
    FileNotFoundError on a folder or file removed between the listing and the count, so ``runs stats`` (and
    ``runs prune``, which sizes the folder before and after) failed beside a running exploration."""
    if path.is_file():
        with suppress(OSError):
            return path.stat().st_size
        return 0
    total = 0
    for top, _dirs, files in os.walk(path):  # errors (a folder removed meanwhile) skip it; links are not followed
        for name in files:
            with suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def _entry_bytes(path: Path) -> int:
    """What removing entry ``path`` frees, as :func:`runs_usage` counts it: nothing for a link (its target was never
    counted, and is not removed)."""
    return 0 if path.is_symlink() else _tree_bytes(path)


def _entries(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


DB_TIMEOUT_S = 5.0  # how long reading the checkpoint database waits for a writer (another critique)


def _threads(db: Path) -> list[str]:
    """The thread ids in the checkpoint database ([] when it does not exist or has no tables yet).

    Only a missing table means "no threads": a database that stays locked (a long critique or prune writing)
    or is not SQLite at all used to count as empty too, so ``runs stats`` showed 0 checkpoints and ``runs
    prune`` removed the run folders while it kept every thread. Those are AssetErrors naming the file."""
    if not db.exists():
        return []
    try:
        # as a URI with its path percent-encoded: in ``f"file:{db}?mode=ro"`` a runs folder named "exp#3" or "a?b"
        # ended the path at the "#" or "?" (and "%20" was decoded), so SQLite opened, and created read-write, a
        # database outside the runs folder ("exp"), and stats and prune found no threads in the real one
        con = sqlite3.connect(Path(os.path.abspath(db)).as_uri() + "?mode=ro", uri=True, timeout=DB_TIMEOUT_S)
        try:
            return [r[0] for r in con.execute("SELECT DISTINCT thread_id FROM checkpoints")]
        finally:
            con.close()
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc):  # fresh, no tables yet
            return []
        raise checkpoint_error(db, exc) from None


def checkpoint_error(path: str | Path, exc: Exception) -> AssetError:
    """One AssetError line naming the checkpoint database for a SQLite failure (sqlite3's own name no file):
    locked by another process, unusable (disk full, no permission) or not a database at all."""
    if "locked" in str(exc) or "busy" in str(exc):
        return AssetError(f"checkpoint database {path} is locked by another process (a critique or prune still "
                          f"writing?); try again when it has finished ({exc})")
    if isinstance(exc, sqlite3.OperationalError):
        # a read-only runs folder: SQLite writes beside its database even to read it (WAL), so say where to go
        hint = ("; set HMRCRITIC_RUNS (or HMRCRITIC_HOME) to a writable folder, or make it writable"
                if "readonly" in str(exc) or "read-only" in str(exc) or "unable to open" in str(exc) else "")
        return AssetError(f"checkpoint database {path} cannot be used ({exc}){hint}")
    return AssetError(f"checkpoint database {path} is damaged ({exc}); move it aside to start afresh (its "
                      "checkpoint threads cannot be resumed)")


IN_USE_FILE = ".in-use"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed, nor replaced by a new one)."""
    try:
        here = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)


def hold_shared(folder: str | Path) -> int | None:
    """Mark the existing ``folder`` as in use until the returned fd is closed: a shared lock on
    ``<folder>/.in-use`` (any number of holders, in any process), which :func:`prune_runs` cannot take
    exclusively, so it leaves the folder alone. Waits while a prune holds the folder; when the prune removed it
    meanwhile, raises FileNotFoundError (the caller makes it again). None where nothing can be locked (no
    ``fcntl``, a file system without locks, a folder that cannot take the lock file)."""
    try:
        import fcntl
    except ImportError:
        return None
    folder = Path(folder)
    while True:
        try:
            fd = os.open(folder / IN_USE_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:
            raise
        except OSError:  # read-only, not a folder: unmarked (prune's own lock cannot be made there either)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # a file system without locks (some NFS mounts): runs unmarked
            os.close(fd)
            return None
        if _same_file(fd, folder / IN_USE_FILE):
            return fd
        os.close(fd)  # pruned while we waited: lock the folder as it is now, if it is still there


@contextmanager
def in_use(folder: str | Path) -> Iterator[None]:
    """Mark a run folder (or an evaluation cache) as in use for the block, making it when missing
    (:func:`hold_shared`). :func:`prune_runs` leaves a folder it cannot lock exclusively, and the thread behind
    it, alone: a folder's age says nothing about a critique running on it right now, and ``--older-than 0``
    removed the inputs of a critique another process was running ("group inputs missing"). Prune removes a
    folder while it holds that lock, so a critique that waited for it may get the lock of a file that is gone
    with its folder: it then makes the folder again and locks the new file (holding the old one marked
    nothing, and the critique wrote into a folder the next prune would remove under it)."""
    folder = Path(folder)
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = hold_shared(folder)
        except FileNotFoundError:  # removed between the two lines: make it again
            continue
        break
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


THREAD_LOCK_SUFFIX = ".threads.lock"  # beside the checkpoint database: one byte per checkpoint thread
LOCK_NOTE_AFTER_S = 5.0  # a critique waiting this long for another process's critique of its group says so once
_THREAD_LOCK_FDS: dict[str, int] = {}  # lock file → its fd, open for the life of the process (never closed)
_THREAD_LOCKS_HELD: dict[tuple[str, int], list] = {}  # (lock file, byte) → [holders in this process, fd]
_THREAD_LOCK_GUARD = threading.Lock()


def _forget_thread_locks() -> None:
    """In a forked child: it holds none of its parent's byte locks (POSIX), so it must not believe it does."""
    global _THREAD_LOCK_GUARD
    _THREAD_LOCK_GUARD = threading.Lock()  # another thread may have held it at the fork: it never lets go
    _THREAD_LOCKS_HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_thread_locks)


def _thread_byte(thread: str) -> int:
    """The byte of the lock file standing for checkpoint thread ``thread`` (< 2**60: two threads share one
    by chance about never, and then they only wait for each other)."""
    return int.from_bytes(hashlib.sha256(thread.encode()).digest()[:8], "big") >> 4


def _try_thread_lock(path: str, byte: int) -> bool | None:
    """Take ``byte`` of ``path`` for this process: True (held, or already held by this process), False (another
    process holds it), None (nothing can be locked: the file cannot be opened, or its file system has no locks).

    POSIX record locks belong to the process and closing ANY fd of the file drops all of them, so the file is
    opened once per process and never closed, and a byte this process holds is counted, not locked twice (and
    unlocked only by its last holder)."""
    import fcntl

    with _THREAD_LOCK_GUARD:
        held = _THREAD_LOCKS_HELD.get((path, byte))
        if held is not None:
            held[0] += 1
            return True
        fd = _THREAD_LOCK_FDS.get(path)
        if fd is None or not _same_file(fd, Path(path)):  # first use, or the runs folder was removed meanwhile:
            try:  # the old fd is left open (closing it would drop what other critiques here hold through it)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError:
                return None
            _THREAD_LOCK_FDS[path] = fd
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            return None  # a file system without locks (some NFS mounts): the critique runs unlocked
        _THREAD_LOCKS_HELD[(path, byte)] = [1, fd]
        return True


def _release_thread_lock(path: str, byte: int) -> None:
    import fcntl

    with _THREAD_LOCK_GUARD:
        held = _THREAD_LOCKS_HELD.get((path, byte))
        if held is None:  # forked meanwhile (this is the child): it holds nothing
            return
        held[0] -= 1
        if held[0] == 0:
            del _THREAD_LOCKS_HELD[(path, byte)]
            with suppress(OSError):
                fcntl.lockf(held[1], fcntl.LOCK_UN, 1, byte)


@contextmanager
def thread_lock(db: str | Path | None, thread: str, group: str | None = None, wait: bool = True) -> Iterator[bool]:
    """Hold checkpoint thread ``thread`` of the checkpoint database ``db`` against critiques in OTHER processes
    for the block (in this process :func:`hmrcritic.agent.api.critique_group` serialises them itself).

    Two processes critiquing one group id at once both found its thread empty, wrote their inputs into one run
    folder and ran one thread: one could score the other's arrays, or both ran. The second now waits (saying so
    once after :data:`LOCK_NOTE_AFTER_S`) and then finds the finished thread, as it would serially. One byte of
    ``<db>.threads.lock`` per thread (no file per group), released when the block ends or the process dies.
    Yields True when held; False only with ``wait=False`` when another process holds it. Without a file
    (``db`` None: an in-memory checkpointer), ``fcntl`` (Windows) or locks on its file system: not locked (True)."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        db = None
    if not db:
        yield True
        return
    path = os.path.realpath(str(db)) + THREAD_LOCK_SUFFIX
    byte = _thread_byte(thread)
    start, pause, noted = time.monotonic(), 0.01, False
    while (got := _try_thread_lock(path, byte)) is False and wait:  # polled: a blocking wait (F_SETLKW) can be
        if not noted and time.monotonic() - start >= LOCK_NOTE_AFTER_S:  # refused as a "deadlock" between two
            noted = True  # processes that merely run several critiques in threads
            log.warning("group %s is being critiqued by another process (checkpoint database %s); waiting for it "
                        "to finish", group if group is not None else thread, db)
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    try:
        yield got is not False
    finally:
        if got:
            _release_thread_lock(path, byte)


@contextmanager
def _held_for_removal(folder: Path, create: bool = True, unlockable: bool = True) -> Iterator[bool]:
    """Whether ``folder`` may be removed (no critique holds it, :func:`in_use`), holding it for the block: an
    exclusive lock on its ``.in-use``, made if missing (``create``), so that a critique starting meanwhile waits
    instead of running on a folder that is about to go. Checked and then released, a critique could start
    between the check and the removal and lose its inputs. ``unlockable`` where nothing can be locked (no
    ``fcntl``, a file system without locks, not a folder): True for a prune the user asked for."""
    try:
        import fcntl
    except ImportError:
        yield unlockable
        return
    fd = None
    for flags in ((os.O_RDWR | os.O_CREAT, os.O_RDWR) if create else (os.O_RDWR,)):
        try:
            fd = os.open(folder / IN_USE_FILE, flags, 0o644)
            break
        except OSError:  # no lock file (and none can be made: read-only) or not a folder: never held
            continue
    if fd is None:
        yield unlockable
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        free = True
    except BlockingIOError:
        free = False
    except OSError:  # a file system without locks: nothing could hold it (in_use runs unmarked there)
        free = unlockable
    try:
        yield free
    finally:
        os.close(fd)  # releases the lock


def remove_if_unheld(folder: str | Path) -> bool:
    """Remove ``folder`` if no command holds it (:func:`hold_shared`); whether it was removed. For leftovers
    a killed command cannot clean up itself (a half-made memory snapshot copy). Unlike :func:`prune_runs`, which
    the user asks for, nothing is removed where it cannot be locked: a live holder could not be told apart."""
    folder = Path(folder)
    with _held_for_removal(folder, unlockable=False) as free:
        if free:
            shutil.rmtree(folder, ignore_errors=True)
    return free


def folder_in_use(folder: str | Path) -> bool:
    """Whether a critique holds ``folder`` (:func:`in_use`) now."""
    with _held_for_removal(Path(folder), create=False) as free:
        return not free


def runs_usage(root: str | Path | None = None) -> dict:
    """Sizes and counts of each part of the runs folder (bytes)."""
    root = Path(root) if root is not None else hconfig.runs_dir()
    db = root / "checkpoints.sqlite"
    parts = {
        "checkpoints": {"count": len(_threads(db)),  # the database with its write-ahead log
                        "bytes": sum(_tree_bytes(db.with_name(db.name + s)) for s in ("", "-wal", "-shm"))},
        "groups": {"count": len(_entries(root / "groups")), "bytes": _tree_bytes(root / "groups")},
        "traces": {"count": len(_entries(root / "traces", "*.jsonl")), "bytes": _tree_bytes(root / "traces")},
        "frozen-memory": {"count": len(_entries(root / "frozen-memory")),
                          "bytes": _tree_bytes(root / "frozen-memory")},
        "evaluate": {"count": len(_entries(root / "evaluate")), "bytes": _tree_bytes(root / "evaluate")},
    }
    return {"root": str(root), "parts": parts, "total_bytes": sum(p["bytes"] for p in parts.values())}


def prune_runs(older_than_days: float = 7.0, root: str | Path | None = None, dry_run: bool = False,
               vacuum: bool = True) -> dict:
    """Remove run folders, checkpoint threads, traces, memory snapshots and evaluation caches last touched
    more than ``older_than_days`` ago (0 = everything), then compact ``checkpoints.sqlite``. A memory snapshot or
    evaluation cache counts as touched when anything in it was (:func:`hmrcritic.io.newest_mtime`).

    A checkpoint thread is removed when its run folder is older than the cutoff or missing. A folder a
    critique holds (:func:`in_use`) stays with its thread, and the trace a critique is writing stays too
    (:func:`hmrcritic.agent.trace.trace_in_use`); the others are held locked until they and their
    threads are gone, so a critique starting meanwhile waits and then starts afresh. ``dry_run``
    counts without deleting. Returns what was (or would be) removed and the bytes before and after."""
    from hmrcritic.agent.api import run_folder_name

    if not older_than_days >= 0:
        raise InputError(f"--older-than must be ≥ 0 days, got {older_than_days}")
    root = Path(root) if root is not None else hconfig.runs_dir()
    before = runs_usage(root)["total_bytes"]
    cutoff = time.time() - older_than_days * DAY_S

    def old(p: Path) -> bool:
        try:
            return p.stat().st_mtime < cutoff
        except FileNotFoundError:
            return True

    removed = {"groups": 0, "checkpoints": 0, "traces": 0, "frozen-memory": 0, "evaluate": 0}
    would_free = 0  # a dry run: the bytes of the files it would remove (the database's compaction not foreseen)
    db = root / "checkpoints.sqlite"
    groups = root / "groups"
    by_folder: dict[str, list[str]] = {}
    for thread in _threads(db):
        try:
            folder = run_folder_name(thread)
        except InputError:  # a blank id has no folder: nothing could resume it
            folder = ""
        by_folder.setdefault(folder, []).append(thread)
    # threads whose folder is not under groups/ (a blank id's "" is no folder: it named groups/ itself)
    orphans = [t for f, ts in by_folder.items() if not (f and (groups / f).exists()) for t in ts
               if _orphaned(db, t, old, cutoff, dry_run)]
    removed["checkpoints"] = len(orphans)
    if orphans and not dry_run:
        _delete_threads(db, orphans)
    stale = [p for p in _entries(groups) if old(p)]
    listed = {p: _contents(p) for p in stale}
    for i in range(0, len(stale), LOCK_BATCH):  # a batch of folders held at a time (open files are limited)
        with ExitStack() as held:  # each folder stays locked until it is gone, its threads with it
            # looked at again once held: a critique of the group (``--fresh``, a resume) that ran and finished
            # between the listing and the lock wrote into it, and its new result and thread went with the old folder
            free = [p for p in stale[i:i + LOCK_BATCH]
                    if held.enter_context(_held_for_removal(p, create=not dry_run and not p.is_symlink()))
                    and _contents(p) == listed[p]]
            threads = [t for p in free for t in by_folder.get(p.name, [])]
            removed["groups"] += len(free)
            removed["checkpoints"] += len(threads)
            if dry_run:
                would_free += sum(_entry_bytes(p) for p in free)
                continue
            if threads:
                _delete_threads(db, threads)
            for p in free:
                _remove_entry(p)
    from hmrcritic.agent.trace import repoint_last, trace_in_use

    for part, pattern in (("traces", "*.jsonl"), ("frozen-memory", "*"), ("evaluate", "*")):
        for p in _entries(root / part, pattern):
            if part == "traces" and (not old(p) or trace_in_use(p)):  # a running critique's trace stays (as its folder)
                continue
            # a memory snapshot or cache written lately stays: dated by the newest file in it, as a folder's own
            # mtime changes only when an entry directly in it comes or goes (an evaluate-critic exploring into
            # <key>/memory, a snapshot whose index files its opening rewrote, looked untouched since made)
            if part != "traces" and newest_mtime(p) >= cutoff:
                continue
            # and so does one a running command holds (hold_shared: a demo's or an evaluation's memory snapshot,
            # an evaluate-critic's cache, a snapshot being copied), whatever its age: removed under a running
            # command, its next read failed ("memory … lacks collection 'semantic_rules'") or its result was lost
            with _held_for_removal(p, create=not dry_run and not p.is_symlink()) as free:
                if not free:
                    continue
                removed[part] += 1
                if dry_run:
                    would_free += _entry_bytes(p)
                else:
                    _remove_entry(p)
    if not dry_run:
        repoint_last(root / "traces")
    if vacuum and not dry_run and db.exists() and (removed["checkpoints"] or _mostly_free(db)):
        try:
            con = sqlite3.connect(str(db), timeout=PRUNE_DB_TIMEOUT_S)
            try:  # rewrites only what is left; then fold its WAL back so the space is really returned
                con.execute("VACUUM")
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                con.close()
        except sqlite3.Error as exc:  # the threads are gone; the next prune compacts what they left (_mostly_free)
            raise AssetError(f"{checkpoint_error(db, exc)}; the old runs were removed, but the file was not "
                             "compacted: `hmrcritic runs prune` compacts it once it can (VACUUM needs room for "
                             "a copy of it)") from None
    # a dry run's "after" is its estimate: read as the real figure, ``before`` (as it was) said a prune frees nothing
    after = before - would_free if dry_run else runs_usage(root)["total_bytes"]
    return {"root": str(root), "older_than_days": older_than_days, "dry_run": dry_run, "removed": removed,
            "bytes_before": before, "bytes_after": after}


def _remove_entry(p: Path) -> None:
    """Remove the entry ``p`` of the runs folder: a link is unlinked and its target left (as _entry_bytes counts
    it); ``shutil.rmtree`` refuses a link, and with ``ignore_errors`` prune counted it removed while it stayed."""
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def _contents(folder: Path) -> frozenset | None:
    """``(name, inode, mtime)`` of each entry directly in the run folder ``folder`` but its lock file (which prune
    itself may make), to tell whether anything was written into it between two looks; None when unreadable."""
    try:
        with os.scandir(folder) as entries:
            out = set()
            for e in entries:
                if e.name != IN_USE_FILE:
                    with suppress(OSError):
                        st = e.stat(follow_symlinks=False)
                        out.add((e.name, st.st_ino, st.st_mtime_ns))
            return frozenset(out)
    except OSError:  # gone, or a file where a folder was
        return None


PRUNE_DB_TIMEOUT_S = 60.0  # how long prune's deletes and VACUUM wait for a critique writing its checkpoint
FREE_SHARE_TO_VACUUM = 0.1  # prune compacts the checkpoint database when this share of it is free pages


def _mostly_free(db: Path) -> bool:
    """Whether at least :data:`FREE_SHARE_TO_VACUUM` of the checkpoint database is free pages.

    Prune compacted only when it had deleted threads itself, so what other deletes left was never given back: a
    prune whose VACUUM failed (a disk full of checkpoints has no room for the copy VACUUM writes) or was killed
    after its deletes, an export forgetting its groups, ``--fresh`` re-runs. The next prune found nothing old,
    deleted nothing and left the file as big as before, every time ("runs folder 6.2 MB -> 6.2 MB" with no
    thread in it)."""
    try:
        con = sqlite3.connect(Path(os.path.abspath(db)).as_uri() + "?mode=ro", uri=True, timeout=DB_TIMEOUT_S)
        try:
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            free = con.execute("PRAGMA freelist_count").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # unreadable now: not compacted (the prune itself went through)
        return False
    return pages > 0 and free >= FREE_SHARE_TO_VACUUM * pages


def _delete_threads(db: Path, threads: list[str], batch: int = 256) -> None:
    """Delete threads in batches, each committed and its write-ahead log folded back into the database.

    Two things make one big ``DELETE`` dangerous on a large file: SQLite builds with ``secure_delete`` on
    overwrite every freed page (through the WAL: deleting 32 GB of checkpoints wrote a 13 GB WAL before we
    stopped it), and a single transaction's WAL holds every page it touched until it commits. Freed pages
    need no overwriting here (checkpoints hold no secrets, see hmrcritic.redact), and small transactions
    keep the WAL small."""
    try:  # a failure names the file (sqlite3's own "database is locked" named none): see checkpoint_error
        con = sqlite3.connect(str(db), timeout=PRUNE_DB_TIMEOUT_S)
        try:
            con.execute("PRAGMA secure_delete = OFF")
            for i in range(0, len(threads), batch):
                chunk = [(t,) for t in threads[i:i + batch]]
                with con:
                    for table in ("checkpoints", "writes"):
                        con.executemany(f"DELETE FROM {table} WHERE thread_id = ?", chunk)
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise checkpoint_error(db, exc) from None


def _orphaned(db: Path, thread_id: str, old, cutoff: float, dry_run: bool = False) -> bool:
    """Whether a thread with no folder under ``groups/`` can go: its stored run folder (``critique_group`` takes
    any ``run_dir``) is missing or older than the cutoff. A thread whose state names no folder is orphaned.

    A ``run_dir`` given as a relative path is stored as given: relative to the folder the critique ran in, which
    prune does not know. Looked up from prune's own folder it was "missing", and ``runs prune --older-than 7``
    deleted the thread of a critique made a minute before; such a thread is as old as its last checkpoint.

    A ``dry_run`` reads the thread read-only and makes no thread lock file: through :func:`open_checkpointer`
    (whose set-up switches the database to WAL and migrates its tables) and :func:`thread_lock` (which creates
    ``<db>.threads.lock``), ``runs prune --dry-run`` wrote into the runs folder it promised only to count."""
    from datetime import datetime

    try:
        with _checkpoint_reader(db, dry_run) as saver:
            got = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        run_dir = (got.checkpoint.get("channel_values") or {}).get("run_dir") if got is not None else None
    except Exception:  # an unreadable checkpoint cannot be resumed either
        return True
    if run_dir and not Path(run_dir).is_absolute():
        # no lock file: no other process has ever locked a thread of this database (none holds one now)
        if not dry_run or os.path.exists(os.path.realpath(str(db)) + THREAD_LOCK_SUFFIX):
            with thread_lock(db, thread_id, wait=False) as free:
                if not free:  # a critique of it running in another process (its folder cannot be checked)
                    return False
        try:
            return datetime.fromisoformat(str(got.checkpoint.get("ts"))).timestamp() < cutoff
        except (TypeError, ValueError, OverflowError):  # no date: kept (its folder may well be there)
            return False
    return not run_dir or old(Path(run_dir)) and not folder_in_use(run_dir)


@contextmanager
def _checkpoint_reader(db: Path, dry_run: bool):
    """A SqliteSaver to read ``db``: the process's own (:func:`open_checkpointer`), or for a dry run one on a
    read-only connection whose set-up is skipped (it would switch the database to WAL and migrate its tables)."""
    from hmrcritic.agent.graph import open_checkpointer

    if not dry_run:
        yield open_checkpointer(db)
        return
    from langgraph.checkpoint.sqlite import SqliteSaver

    con = sqlite3.connect(Path(os.path.abspath(db)).as_uri() + "?mode=ro", uri=True, timeout=DB_TIMEOUT_S)
    try:
        saver = SqliteSaver(con)
        saver.is_setup = True  # the tables are there (_threads read them)
        # what set-up finds out: a database from before langgraph's ``task_path`` column is read without it
        saver._has_task_path = any(r[1] == "task_path" for r in con.execute("PRAGMA table_info(writes)"))
        yield saver
    finally:
        con.close()
