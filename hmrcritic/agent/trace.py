"""Run traces: which node ran when, for how long, and what it changed.

Each ``critique_group`` call that computes something writes ``runs_dir()/traces/<run_id>.jsonl`` (one
checksummed record per event, appended as it happens, so a crashed run still has its trace) and points
``runs_dir()/traces/LAST`` at it. ``hmrcritic trace RUN_ID | --last`` prints it. LangSmith tracing needs
nothing here: LangChain switches it on from its environment variables, and every upload is scrubbed
(:func:`hmrcritic.redact.guard_langsmith`). Langfuse is no such case: LangChain reads no Langfuse variables (it
traces only through a callback handler, and the agent takes no callbacks), and nothing would scrub what it sent.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hmrcritic import config as hconfig
from hmrcritic.errors import InputError
from hmrcritic.io import append_jsonl, atomic_write_text, read_jsonl
from hmrcritic.redact import redact_url, register_url, scrub, scrub_tree

log = logging.getLogger(__name__)


def traces_dir() -> Path:
    return hconfig.runs_dir() / "traces"


POINTER_LOCK = ".LAST.lock"  # beside LAST: held by whoever reads or writes the pointer to change it
POINTER_LOCK_TIMEOUT_S = 30.0


@contextmanager
def _pointer_lock(d: Path) -> Iterator[None]:
    """Hold ``d/.LAST.lock`` for the block: every change of ``LAST`` (a run starting, :func:`repoint_last`) goes
    through it, so a repoint cannot undo a new run's pointer.

    Without it, an export (which forgets each group's trace and repoints ``LAST``) or a prune read ``LAST`` naming
    a deleted trace, listed the traces, and wrote the newest of them, while a critique in another process started
    between the listing and the write: its pointer was overwritten with an older run, or removed when the folder
    had held no other trace, and ``trace --last`` then showed another run or "no runs recorded yet". The pointer
    is a convenience: where it cannot be locked (no lock within the timeout, a file system without locks) the
    change goes ahead unlocked rather than failing a critique."""
    from hmrcritic.io import waiting_lock

    with waiting_lock(d / POINTER_LOCK, POINTER_LOCK_TIMEOUT_S):
        yield


def _point_last_at(run_id: str) -> None:
    d = traces_dir()
    d.mkdir(parents=True, exist_ok=True)
    with _pointer_lock(d):
        atomic_write_text(d / "LAST", run_id + "\n")


def point_last_at_finished(run_id: str) -> None:
    """Point ``LAST`` at a finished run a critique returned again (its group, its settings: nothing re-ran), so that
    ``trace --last`` shows the run the critique printed, not whatever ran before it. Only a run whose trace is still
    on disk; the pointer is a convenience, so a failure to write it is logged, never raised."""
    d = traces_dir()
    if not d.is_dir():
        return
    try:
        with _pointer_lock(d):  # checked under the lock: a prune that removed it meanwhile has repointed LAST
            if (d / f"{run_id}.jsonl").is_file():
                atomic_write_text(d / "LAST", run_id + "\n")
    except OSError as failed:
        log.warning("traces/LAST could not be pointed at run %s (%s)", run_id, scrub(failed))


def summarise_update(node: str, update: dict[str, Any]) -> dict[str, Any]:
    """A short, human-readable account of a node's state update (never the arrays or the full texts)."""
    out: dict[str, Any] = {"keys": sorted(update)}
    if "evidence" in update:
        out["measures"] = sorted(update["evidence"])
    if "tags" in update:
        out["tags"] = update["tags"]
    if "renders" in update:
        out["renders"] = sorted(update["renders"])
    if "rules" in update:
        out["rules"] = [r.get("rule_id") for r in update["rules"]]
    if "prototype_recall" in update:  # packed (state.pack_prototype_hits): the hits, not the distinct prototypes
        out["prototypes"] = sum(len(row) for row in (update["prototype_recall"] or {}).get("hits", []))
    elif "prototypes" in update:  # a recall written before the state packed them
        out["prototypes"] = sum(len(row) for row in update["prototypes"])
    if update.get("calibration"):
        cal = update["calibration"]
        out["calibration"] = f"log s' = {cal['intercept']:.2f} + {cal['slope']:.2f}·log s"
    if "critique" in update:
        scores = update["critique"].get("scores", [])
        if scores:
            best = max(scores, key=lambda s: s["overall"])
            worst = min(scores, key=lambda s: s["overall"])
            out["best"] = f"h{best['index']} {best['overall']:.2f}"
            out["worst"] = f"h{worst['index']} {worst['overall']:.2f}"
        out["rules_applied"] = len(update["critique"].get("rules_applied", []))
    if node == "critique" and update.get("reflections"):
        changes = list(update["reflections"][-1].get("changes", []))
        # the first 20, and how many more: a revision that moved 30 hypotheses read as one that moved 20
        out["changes"] = changes[:20] + ([f"… {len(changes) - 20} more"] if len(changes) > 20 else [])
    if node == "reflect" and update.get("reflections"):
        last = update["reflections"][-1]
        out["action"] = last.get("action")
        kinds: dict[str, int] = {}
        for issue in last.get("issues", []):
            kinds[issue["kind"]] = kinds.get(issue["kind"], 0) + 1
        out["issues"] = kinds
    if "memory_written" in update:
        out["memory_written"] = update["memory_written"]
    return out


ERROR_CHARS = 500  # of a run's error kept in its trace (the whole error is what the command itself printed)


def _cut(text: str, chars: int) -> str:
    """``text`` cut to ``chars`` characters, ending in "…" when it was cut: an error cut mid-word ("HTTP 401: inval")
    read as the whole message, with nothing saying that more had been said."""
    return text if len(text) <= chars else text[:chars - 1] + "…"


def _copy_tree(obj: Any) -> Any:
    """The nested dicts, lists and tuples of ``obj`` copied (what :func:`~hmrcritic.redact.scrub_tree` copies,
    without scrubbing)."""
    if isinstance(obj, dict):
        return {k: _copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tree(v) for v in obj)
    return obj


def run_error_text(exc: BaseException) -> str:
    """How a trace records the exception that ended a run: "<type>: <message>". An interrupt has no message of
    its own: recorded as "KeyboardInterrupt: " (shown as "error: KeyboardInterrupt: "), a run stopped by Ctrl-C or
    SIGTERM read as one that crashed on an empty error. It says what stopped the run now, SIGTERM where the
    command line turned it into the interrupt (``cli.Terminated`` carries ``signal_name``)."""
    if isinstance(exc, KeyboardInterrupt):
        return f"KeyboardInterrupt: interrupted ({getattr(exc, 'signal_name', None) or 'Ctrl-C'})"
    return f"{type(exc).__name__}: {exc}"


def _shown_error(text: str) -> str:
    """A trace's error record as ``trace`` (and ``--mermaid``) shows it: "error: …", and an interrupt as what it
    was, not as an error — also one recorded before :func:`run_error_text` said which ("KeyboardInterrupt: ")."""
    interrupt = _INTERRUPT.fullmatch(text)
    if interrupt:
        return interrupt.group(1) or "interrupted (Ctrl-C or SIGTERM)"
    return "error: " + text


_INTERRUPT = re.compile(r"KeyboardInterrupt:?\s*(interrupted \([\w-]+\))?\s*")


class TraceWriter:
    """Appends a run's events to ``traces_dir()/<run_id>.jsonl`` as they happen.

    Each record is flushed, not fsynced (``append_jsonl(durable=False)``): a trace is a diagnostic, and a killed
    process keeps every record written; the run's state is in the checkpoint database, which SQLite keeps
    durable. Its eleven fsyncs a group were about a quarter of a builtin critique's time on a busy disk.

    ``only_on_error``: keep the events in memory and write them (and point ``LAST`` at the run) only if the
    run fails — for throwaway critiques (exploration, evaluation loops), whose thousands of successful runs
    would otherwise bury the ones a person wants to trace."""

    def __init__(self, run_id: str, group_id: str, only_on_error: bool = False):
        self.run_id = run_id
        self.group_id = group_id
        self.path = traces_dir() / f"{run_id}.jsonl"
        self.step = 0
        self.t0 = time.time()  # when the run started, as a date (the start record's "time")
        # its length on a clock that only goes forward: the wall clock stepped back by NTP (or the user) during a
        # long VLM critique made the finish record's total negative, or hours long when it stepped forward
        self._m0 = time.monotonic()
        self._held: list[dict] | None = [] if only_on_error else None
        self._lock: Any = None  # the trace file, open with a shared lock while the run writes it

    def _hold_file(self) -> None:
        """A shared lock on the trace file until the run ends, so that ``runs prune`` leaves it alone
        (:func:`trace_in_use`): ``--older-than 0`` deleted a running critique's trace, which then went on
        without its start record, and ``LAST`` was pointed at another run."""
        try:
            import fcntl

            fh = open(self.path, "rb")  # noqa: SIM115 - held open until the run ends
        except (ImportError, OSError):  # no fcntl (Windows): nothing is locked
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_SH)
        except OSError:  # a file system without locks
            fh.close()
            return
        self._lock = fh

    def _release_file(self) -> None:
        fh, self._lock = self._lock, None
        if fh is not None:
            fh.close()  # releases the lock

    def _write(self, rec: dict) -> None:
        # every record scrubbed, not just error lines: the config it starts with holds URLs (a Chroma server's
        # may carry credentials), and a node's summary can quote what an endpoint said
        rec = {"run_id": self.run_id, "group_id": self.group_id, **rec}
        if self._held is not None:
            # scrubbed when written (_flush), if ever: a throwaway critique's records are almost always dropped,
            # and scrubbing them here (every string of every record) was 7 % of such a critique (62 → 58 ms per
            # group of 16, builtin judge, no render). Copied, so that a later change to a node's update (the
            # summary quotes its lists) cannot reach the held record
            self._held.append(_copy_tree(rec))
        else:
            append_jsonl(self.path, scrub_tree(rec), durable=False)

    def _flush(self) -> None:
        held, self._held = self._held or [], None
        for rec in held:
            append_jsonl(self.path, scrub_tree(rec), durable=False)
        _point_last_at(self.run_id)

    def start(self, cfg, resumed: bool = False) -> None:
        config = cfg.model_dump()
        if config.get("chroma_url"):
            # ``user:password@host:port`` (no scheme, as Chroma accepts it) is beyond scrub's reach as text:
            # masked as an address here, and its credentials registered for the error lines that quote it
            register_url(config["chroma_url"])
            config["chroma_url"] = redact_url(config["chroma_url"])
        self._write({"event": "start", "time": self.t0, "resumed": resumed, "config": config})
        if self._held is None:
            self._hold_file()
            try:  # the pointer is a convenience (see _pointer_lock): one that cannot be written (``LAST`` made a
                # folder, no room for its temporary copy) failed the critique before it began, and the trace file
                # stayed locked, as in use, for as long as its error was kept (a notebook's last traceback)
                _point_last_at(self.run_id)
            except OSError as failed:
                log.warning("traces/LAST could not be pointed at run %s (%s); the critique goes on", self.run_id,
                            scrub(failed))

    def node(self, node: str, update: dict, seconds: float) -> None:
        self.step += 1
        self._write({"event": "node", "step": self.step, "node": node, "seconds": round(seconds, 6),
                     "changed": summarise_update(node, update)})

    def error(self, exc: BaseException) -> None:
        """Record the run's failure ``exc``, which the caller raises next. A trace that cannot be written (a full
        disk, an unwritable or removed traces folder: a throwaway critique writes its trace only now) is warned
        about, not raised: its OSError replaced ``exc`` — a VLM endpoint's refusal or a checkpoint database's
        "disk is full" with its way out read as "Permission denied: traces/<run>.jsonl" — and the trace file's
        lock was never let go (a later prune kept the file as "in use")."""
        try:
            self._write({"event": "error", "error": _cut(scrub(run_error_text(exc)), ERROR_CHARS)})
            if self._held is not None:
                self._flush()
        except OSError as failed:
            log.warning("the trace of run %s could not be written (%s); the run's own error follows", self.run_id,
                        scrub(failed))
        finally:
            self._release_file()

    def finish(self, values: dict) -> None:
        """Record the end of a run that succeeded. A record that cannot be written is warned about, not raised (as
        in :meth:`error`): the critique has scored its group and stored its checkpoint, and an OSError from its
        diagnostic trace reported the finished critique as failed."""
        try:  # the lock let go even when the record cannot be written
            self._write({"event": "finish", "seconds": round(time.monotonic() - self._m0, 6),
                         "rounds": values.get("round", 0), "done": bool(values.get("done"))})
        except OSError as failed:
            log.warning("the trace of run %s could not be written (%s); the critique itself finished", self.run_id,
                        scrub(failed))
        finally:
            self._release_file()


def trace_in_use(path: str | Path) -> bool:
    """Whether a running critique holds the trace file ``path`` (:meth:`TraceWriter._hold_file`) now."""
    try:
        import fcntl

        fh = open(path, "rb")  # noqa: SIM115
    except (ImportError, OSError):
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a file system without locks: nothing could hold it
            return False
    return False


def _read_pointer(pointer: Path) -> str | None:
    """The run id ``LAST`` names ("" when empty), or None when there is no pointer. Read as text whatever its bytes:
    a pointer damaged into bytes that are no UTF-8 ended ``trace --last`` in a bare "UnicodeDecodeError" naming no
    file, and ``runs prune`` and every export's repoint after its removals; it reads as a run with no trace."""
    try:
        return pointer.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:  # never written, or removed (repoint_last: no trace left) since
        return None


def repoint_last(d: Path | None = None) -> None:
    """Point ``LAST`` at the newest trace left in ``d`` (or remove it when none is), after traces were deleted.

    An export keeps each critique's trace only until the group is in its dataset; deleting ``LAST`` with it left
    ``trace --last`` saying "no runs recorded yet" beside the traces of earlier critiques."""
    d = traces_dir() if d is None else Path(d)
    if not d.is_dir():  # no traces, and no pointer either
        return
    pointer = d / "LAST"
    with _pointer_lock(d):  # read, listed and written as one: see _pointer_lock
        current = _read_pointer(pointer) or ""
        if current and (d / f"{current}.jsonl").exists():
            return
        left = _traces_left(d)
        if left:
            atomic_write_text(pointer, max(left)[1] + "\n")
        else:
            pointer.unlink(missing_ok=True)


def _traces_left(d: Path) -> list[tuple[float, str]]:
    """``(mtime, run id)`` of every trace file in ``d``: what ``d.glob("*.jsonl")`` with ``is_file()`` and
    ``stat()`` per match found (hidden names and links to files included, folders and dangling links not), read
    with one ``scandir``. An export forgets each group's trace once it is in the dataset, so every exported group
    ran this scan over the whole history: glob cost two stats and a Path per trace, 29 ms per group beside 5,000
    kept traces (12 ms now).

    A trace removed between the listing and its ``stat`` is left out: the workers of one export forget their
    groups' traces at the same time, and the ``stat`` of one another worker had just deleted raised
    FileNotFoundError out of :func:`repoint_last`, failing the group whose result was already stored."""
    out = []
    with os.scandir(d) as entries:
        for e in entries:
            if e.name.endswith(".jsonl"):
                try:
                    if e.is_file():
                        out.append((e.stat().st_mtime, e.name[:-len(".jsonl")]))
                except OSError:  # gone meanwhile (a dangling link, as before, is no trace either)
                    continue
    return out


def _no_runs_yet(d: Path) -> str:
    """What ``trace`` says when the traces folder ``d`` holds no trace: how one gets there, and which folder is
    read. "no runs recorded yet in DIR" alone left a user who had just run an exploration (whose successful runs
    keep no trace) or pointed HMRCRITIC_HOME elsewhere with nothing to go on."""
    return (f"no runs recorded yet in {d}: a critique records one (`hmrcritic critique --scene test:0 --out DIR`; "
            "exploration and evaluation keep only the traces of runs that failed); HMRCRITIC_RUNS, else "
            "HMRCRITIC_HOME/runs, chooses the folder")


def _listed(d: Path) -> list[tuple[float, str]]:
    """:func:`_traces_left`, or none where ``d`` cannot be listed (missing, or no folder)."""
    try:
        return _traces_left(d)
    except OSError:
        return []


def _newest(left: list[tuple[float, str]], what: str = "the newest trace") -> str:
    return f"{what} is {max(left)[1]} (`hmrcritic trace {max(left)[1]}`)"


def resolve_run(run_id: str | None = None, last: bool = False) -> Path:
    d = traces_dir()
    if last or not run_id:
        pointer = d / "LAST"
        run_id = _read_pointer(pointer)
        if run_id is None:
            # no pointer beside traces (removed by hand, or written by a version without one): "no runs recorded
            # yet" was untrue there
            left = _listed(d)
            raise InputError(f"{pointer} is missing: {_newest(left)}" if left else _no_runs_yet(d))
        if not run_id:  # an empty pointer would match every trace below
            raise InputError(f"{pointer} is empty: the last run is unknown; give a RUN_ID")
        if not (d / f"{run_id}.jsonl").is_file():
            # its trace deleted by hand: said so, with the newest one left. It fell through to the part-of-an-id
            # search below and `--last` answered "run '<id>' not found", an id the user never typed
            left = _listed(d)
            newest = f"; {_newest(left, 'the newest trace left')}" if left else ""
            raise InputError(f"the last run {run_id} has no trace in {d} any more (deleted){newest}")
    elif run_id.endswith(".jsonl") and run_id != ".jsonl":
        # a trace's file name, as `ls` (which the messages below point to) shows it: the run id is its stem
        run_id = run_id[:-len(".jsonl")]
    if any(sep in run_id for sep in ("/", "\\")) or run_id in (".", ".."):  # a run id is a file name in d
        raise InputError(f"run id {run_id!r} is not a run id (no path separators); see `ls {d}`")
    path = d / f"{run_id}.jsonl"
    if not path.exists():
        # a part of the id, matched as text: glob would read "*", "?" and "[" in it as wildcards ("**" raised)
        matches = sorted(m for m in d.glob("*.jsonl") if run_id in m.stem)
        if len(matches) == 1:
            return matches[0]
        if matches:
            # newest first, as "latest" says (run ids open with their start time): the oldest of the three was
            # listed first, so the run a user had just made came last, after the word "latest"
            shown = ", ".join(m.stem for m in reversed(matches[-3:]))
            raise InputError(f"run id {run_id!r} is ambiguous in {d}: {len(matches)} runs match (latest first: "
                             f"{shown}); give more of the id")
        # where it was looked for and what to do next: no command lists the runs, `ls` does (an id is a file's stem)
        if not _listed(d):
            raise InputError(f"run {run_id!r} not found: {_no_runs_yet(d)}")
        raise InputError(f"run {run_id!r} not found in {d}: `hmrcritic trace --last` shows the latest run, `ls {d}` "
                         "lists them all (a run id is a file name there without .jsonl; a critique prints its own "
                         "as \"run: ID\")")
    return path


_FIELDS = {  # what format_trace and trace_mermaid read of each event, beside run_id and group_id
    "start": {"config": dict},
    "node": {"step": int, "node": str, "seconds": (int, float), "changed": dict},
    "error": {"error": str},
    "finish": {"seconds": (int, float), "rounds": int},
}


def _is_trace_record(rec: dict) -> bool:
    event = rec.get("event")  # a list or object there failed the lookup as "TypeError: unhashable type"
    fields = _FIELDS.get(event) if isinstance(event, str) else None
    return (fields is not None and isinstance(rec.get("run_id"), str) and isinstance(rec.get("group_id"), str)
            and all(isinstance(rec.get(k), t) and not isinstance(rec.get(k), bool) for k, t in fields.items())
            and _float_or_none(rec.get("seconds")) and _plain_json(rec))


MAX_RECORD_DEPTH = 32  # of the nested dicts and lists of a trace record; what a TraceWriter writes is about 4 deep


def _plain_json(rec: dict) -> bool:
    """Whether ``rec`` holds only finite numbers and is at most :data:`MAX_RECORD_DEPTH` deep: what ``trace --json``
    can print back as JSON. A record edited by hand (no checksum to fail) with ``NaN`` or ``Infinity``, which
    Python's JSON reader accepts, was printed as such by ``--json`` (no JSON parser but Python's reads it), and one
    nested a few hundred deep ended ``--json`` in "error: RecursionError" (scrubbed level by level)."""
    stack = [(rec, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict | list):
            if depth >= MAX_RECORD_DEPTH:
                return False
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return True


def _float_or_none(value: Any) -> bool:
    """Whether ``value`` (a record's "seconds", if any) can be shown as a float: an integer of hundreds of digits
    (an edited or damaged record) ended ``trace`` in "OverflowError: int too large to convert to float"."""
    try:
        float(value) if value is not None else None
    except (OverflowError, TypeError, ValueError):  # TypeError / ValueError: an object or text on a start or error
        return False  # record, whose "seconds" _FIELDS does not type ("float() argument must be … not 'dict'")
    return True


def read_trace(run_id: str | None = None, last: bool = False) -> list[dict]:
    """The run's trace records. A line that is no such record is left out, and a file with none is refused: a
    ``.jsonl`` of another tool (or of another version) in the traces folder, or a record edited by hand, ended
    ``trace`` in "error: KeyError: 'run_id'" (``--mermaid``: "KeyError: 'step'") with nothing naming the file."""
    path = resolve_run(run_id, last)
    if not path.is_file():  # a folder of that name ended `trace` in "IsADirectoryError: [Errno 21] Is a directory"
        raise InputError(f"{path} is not a trace file (a folder?); see `ls {path.parent}`")
    records = read_jsonl(path)
    kept = [r for r in records if _is_trace_record(r)]
    if records and not kept:
        raise InputError(f"{path} holds no hmrcritic trace records (a file of another tool or version?)")
    # the lines read_jsonl skipped (torn, garbled, failing their checksum) and those that are no trace record: a
    # trace cut short within its first record, or emptied, printed "(empty trace)" and exited 0, and one damaged in
    # the middle showed its steps with one missing ("3. critique", "5. critique") and nothing saying why
    lines = _line_count(path)
    if not kept:
        raise InputError(f"{path} is empty: its run was stopped (or the file cut short) before its first record "
                         "was written" if not lines else f"{path} holds no readable trace record: it was cut "
                         "short or damaged mid-write")
    if lines > len(kept):
        log.warning("%d of the %d lines of %s could not be read as trace records (cut short or damaged mid-write, "
                    "or edited): the trace below lacks them", lines - len(kept), lines, path)
    return kept


def _line_count(path: Path) -> int:
    """The lines of ``path`` that are not blank (what :func:`~hmrcritic.io.read_jsonl` tries to read); 0 when it
    cannot be read again (pruned since)."""
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


LINE_CHARS = 400  # a node's line is kept to about this long by listing fewer items of its longest lists
_MORE = re.compile(r"… (\d+) more")  # how summarise_update ends a list it cut short

# what a terminal acts on that redact.printable leaves: a carriage return (the rest of a line written over what
# came before it: a group id "g\rX" printed "X" over the run's heading), vertical tab, form feed, NEL
_CURSOR_MOVES = str.maketrans(dict.fromkeys("\r\x0b\x0c\x85", "?"))


def _describe(changed: dict, room: int) -> str:
    """``key=value; …`` for a node's summary, at most ``room`` characters where lists can be shortened.

    The line used to be cut at a fixed character count, mid-item: a revision's changes ended in "h15 overall
    5.91→5." (a number cut short, with nothing saying so). Lists now lose whole items from their end, the
    longest list first, and say how many are not shown."""
    ch = {k: v for k, v in changed.items() if k != "keys"}
    lists: dict[str, list[str]] = {}
    dropped: dict[str, int] = {}
    for k, v in ch.items():
        if isinstance(v, list):
            # a list the record itself cut short ends in "… N more" (summarise_update keeps a revision's first 20
            # changes): counted with what is dropped here, not listed as one more item — a revision that moved 46
            # hypotheses read "[12 changes, … 9 more]", the 26 the record left out lost in the 9
            more = _MORE.fullmatch(v[-1]) if v and isinstance(v[-1], str) else None
            lists[k] = [repr(x) for x in (v[:-1] if more else v)]
            dropped[k] = int(more.group(1)) if more else 0

    def text() -> str:
        parts = []
        for k, v in ch.items():
            if k in lists:
                items = lists[k] + ([f"… {dropped[k]} more"] if dropped[k] else [])
                v = "[" + ", ".join(items) + "]"
            parts.append(f"{k}={v}")
        return "; ".join(parts)

    desc = text()
    while len(desc) > room and any(lists.values()):
        k = max((k for k in lists if lists[k]), key=lambda k: len(", ".join(lists[k])))
        lists[k].pop()
        dropped[k] += 1
        desc = text()
    return desc


def revision_rounds_text(n: int) -> str:
    """``n`` revision rounds in words: "2 revision round(s)" (every finished run's last line, text and Mermaid)
    read as a template left unfilled. Also critique's table line and report.html."""
    return f"{n} revision round" + ("" if n == 1 else "s")


def format_trace(records: list[dict]) -> str:
    """The node sequence with timings and what each node changed, one line per node."""
    if not records:
        return "(empty trace)"
    lines = [f"run {records[0]['run_id']}  group {records[0]['group_id']}"]
    for r in records:
        if r["event"] == "start":
            # a resumed run's steps count from its checkpoint: the nodes before it are in the earlier run's trace (one
            # interrupted, or whose critique failed: "interrupted" read false after a failure)
            resumed = (" (resumed: earlier nodes ran in an earlier unfinished run of this group)"
                       if r.get("resumed") else "")
            lines.append(f"  start{resumed}  judge={r['config'].get('judge')}"
                         f" learn={r['config'].get('learn')} max_reflections={r['config'].get('max_reflections')}")
        elif r["event"] == "node":
            # float first: an integer of 306 digits passes _float_or_none, but × 1000 no longer converts
            head = f"  {r['step']:>2}. {r['node']:<13} {float(r['seconds']) * 1000:8.1f} ms  "
            lines.append(head + _describe(r["changed"], LINE_CHARS - len(head)))
        elif r["event"] == "error":
            # a multi-line error (a validation error lists one field a line) stays indented under its run: its
            # later lines started at column 0, like the heading of another run
            lines.append("  " + _shown_error(str(r["error"])).replace("\r\n", "\n").replace("\n", "\n         "))
        elif r["event"] == "finish":
            lines.append(f"  finish  {float(r['seconds']) * 1000:.1f} ms total, {revision_rounds_text(r['rounds'])}")
    if records[-1]["event"] not in ("error", "finish"):
        lines.append("  (no finish recorded: the run was interrupted, or is still running)")
    return "\n".join(lines).translate(_CURSOR_MOVES)


_MERMAID = {'"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;", **dict.fromkeys("\r\n\x0b\x0c\x85\u2028\u2029", " ")}


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label: quotes, angle brackets and ``#`` as Mermaid entity codes, and each
    line break a space (a ``\\r`` of an endpoint's error body, kept, wrote the rest of the label over its line)."""
    return "".join(_MERMAID.get(c, c) for c in text)


def trace_mermaid(records: list[dict]) -> str:
    """The node sequence of one run as a Mermaid flowchart (one box per node with its duration, in order).

    ``hmrcritic trace RUN_ID --mermaid`` printed the agent's static graph and ignored the run, so a run id
    that did not exist exited 0 and a revise loop's rounds could not be seen; the static graph is what
    ``--mermaid`` without a run prints."""
    lines = ["flowchart TD"]
    if records:
        lines.append(f'    run_title["run {_mermaid_text(str(records[0].get("run_id", "")))}"]:::meta')
    prev = "run_start"
    resumed = any(r.get("event") == "start" and r.get("resumed") for r in records)
    # a resumed run starts at its checkpoint (its first box is no render): said, as format_trace says it
    lines.append('    run_start(["start (resumed from a checkpoint)"])' if resumed else "    run_start([start])")
    for r in records:
        if r.get("event") == "node":
            name = f"n{r['step']}"
            # "1: render", not "1. render": Mermaid 11 reads a label that opens with "1. " as a markdown list and
            # draws "Unsupported markdown: list" in the box (mermaid-js/mermaid#6111)
            label = f"{r['step']}: {r['node']} · {float(r['seconds']) * 1000:.1f} ms"
            lines += [f'    {name}["{_mermaid_text(label)}"]', f"    {prev} --> {name}"]
            prev = name
        elif r.get("event") == "error":
            lines += [f'    run_error["{_mermaid_text(_cut(_shown_error(str(r.get("error", ""))), 160))}"]:::error',
                      f"    {prev} --> run_error"]
            prev = "run_error"
        elif r.get("event") == "finish":
            label = f"finish · {float(r['seconds']) * 1000:.1f} ms, {revision_rounds_text(r['rounds'])}"
            lines += [f'    run_finish(["{_mermaid_text(label)}"])', f"    {prev} --> run_finish"]
            prev = "run_finish"
    lines += ["    classDef error fill:#fdd,stroke:#c33", "    classDef meta fill:none,stroke:none"]
    return "\n".join(lines)
