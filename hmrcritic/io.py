"""Atomic, checksummed file writes shared by every writer in the toolkit.

A crash mid-write must never leave a torn file: write to a temporary file in the same folder, fsync, then
``os.replace`` (atomic on POSIX). JSONL appends carry a per-record checksum so a reader can drop a torn
last line after a kill -9.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def as_text(name: str) -> str:
    """A name from the command line or the file system (an image's file name is the default group id) as text:
    bytes that are not UTF-8 (a file from an old Windows zip or camera, ``caf\\xe9.jpg``; any non-ASCII name under
    ``LC_ALL=C PYTHONUTF8=0``) reach Python as lone surrogates, and the critique died on them with "surrogates not
    allowed" once the group id was hashed, checkpointed or written. Decoded from the name's bytes as UTF-8, so a
    UTF-8 name read under an ASCII locale is itself again; what is no UTF-8 becomes U+FFFD."""
    try:
        return os.fsencode(name).decode("utf-8", "replace")
    except UnicodeError:  # surrogates that are not escaped bytes (``"\\ud800"`` from a JSON file)
        return name.encode("utf-8", "replace").decode("utf-8")


def _umask() -> int:
    """The process's umask, read from ``/proc`` where the kernel shows it: setting it to learn it (the only other
    way) races with threads creating files meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _new_file_mode(path: Path) -> int:
    """The mode a write to ``path`` leaves: a replaced file keeps its own (a memory export the user made private
    stays private); a new one gets what ``open()`` would give it (0666 less the umask: 0644 by default, 0600
    under ``umask 077``). mkstemp's 0600 was widened to a fixed 0644, so a user's ``umask 077`` was ignored and
    every trace, memory export and dataset became readable by all."""
    import stat

    try:
        return stat.S_IMODE(path.stat().st_mode) & 0o777
    except OSError:
        return 0o666 & ~_umask()


def check_out_folder(out: str | os.PathLike, holds: str) -> None:
    """Refuse an ``--out`` that cannot become a folder (for ``holds``) before a command's work: a file there or on
    its path, or a dangling link on it. (``critique``, ``sample``, ``train-base``, ``demo`` and ``learning-curve``.)

    The folder used to be made only after the work, so ``--out some_file`` failed at the very end: with
    ``critique --learn`` the memory had already taken the group's prototypes and rule statistics, and the run was
    checkpointed as finished, for a command that reported an error."""
    from hmrcritic.errors import InputError

    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for {holds}")
    # the folder the new ones go into; a link counts as there even when what it names is not (``exists`` said no)
    first = next(p for p in (out, *out.parents) if os.path.lexists(p))
    if first.is_symlink() and not first.exists():
        # a dangling link (to an unmounted drive, a removed folder) passed as "to be made" and failed only at the
        # end, after the critique (and --learn's memory writes), as "File exists … a file is where a folder is
        # needed"
        raise InputError(f"--out {out}: {first} is a link to {os.readlink(first)}, which does not exist")
    if not first.is_dir():
        raise InputError(f"--out {out}: {first} is a file, so no folder can be made inside it")
    if not os.access(first, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {first} is not writable")


def check_output_target(path: str | os.PathLike, what: str = "") -> None:
    """Refuse a target that is no file to replace: a device, a pipe, a socket (through links), or a link to a
    process's file descriptor (``/dev/stdout`` → ``/proc/self/fd/1``, also when fd 1 is a regular file). ``what``
    (e.g. "memory export") leads the message; a command calls this before its work, every atomic write before
    writing.

    The write is a new file renamed over the target. Over ``/dev/null`` or ``/dev/stdout`` the rename replaced the
    device or the link with a regular file (as root, as in a container: for every process of the machine), and
    the data never reached the pipe or terminal the user meant; a FIFO was swapped for a file its reader never saw."""
    import stat

    from hmrcritic.errors import InputError

    try:
        path = Path(os.fsdecode(path))
        mode = os.stat(path).st_mode  # through links
        link = os.readlink(path) if path.is_symlink() else ""
    except (OSError, ValueError):  # not there yet (the usual case), or a name the write itself refuses
        return
    # a folder: each writer's own, clearer refusal
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or link.startswith(("/proc/", "/dev/fd/")):
        raise InputError(f"{what + ': ' if what else ''}{path} is not a regular file (a device, pipe, terminal or "
                         "socket, or a link to a process's file descriptor), so not a file to write: outputs are "
                         "written whole and renamed into place; give a file name (e.g. out.json)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    if path.is_dir():  # else os.replace fails naming our temporary file ("/.tmp.x1y2.tmp -> /tmp"), not the target
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    check_output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    with _errors_naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{_tmp_stem(path.name)}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                # mkstemp makes 0600; outputs are ordinary files, as open() would make them. Best effort:
                # FAT/exFAT sticks and some network mounts refuse chmod (EPERM), which failed every write there
                # (and leaked fd)
                with contextlib.suppress(OSError):
                    os.fchmod(fh.fileno(), mode)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """fsync ``folder`` itself: a rename (or a new file) is an entry in the folder, and the fsync of the file does
    not make that entry durable. Without it, a power cut after a write that "succeeded" could bring back the old
    file, or no file at all for a new one (ext4, XFS and btrfs persist a rename only with its folder). Best effort:
    a folder that cannot be opened or synced (Windows, some network mounts: EINVAL) is left as it was."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TMP_STEM_BYTES = 200  # of a file's name in its temporary file's name (which adds 14: ".", "." + 8 random + ".tmp")


def _tmp_stem(name: str) -> str:
    """The part of file name ``name`` that its temporary file's name repeats: all of it, or its first
    :data:`TMP_STEM_BYTES` bytes (whole characters) for a long one. A name of 242 to 255 bytes — which the
    file system takes — made a temporary name longer than NAME_MAX (255), and the write failed with "File name
    too long" naming the file, as if its own name were."""
    stem = name[:TMP_STEM_BYTES]
    while len(os.fsencode(stem)) > TMP_STEM_BYTES:
        stem = stem[:-1]
    return stem


@contextlib.contextmanager
def _errors_naming(path: Path) -> Iterator[None]:
    """An OSError inside the block re-raised naming ``path``, the file being written: a full disk mid-write said
    only "No space left on device" (write and fsync errors carry no file name) and an unwritable folder named
    our hidden temporary file (``.scores.json.x1y2.tmp``), neither the file the user asked for. Same class and
    errno, so callers that catch PermissionError or test ``errno`` are unaffected."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or (exc.filename == str(path) and exc.filename2 is None):
            raise
        named = None
        with contextlib.suppress(TypeError):  # an OSError subclass with another signature: kept as it is
            named = type(exc)(exc.errno, exc.strerror or str(exc), str(path))
        if named is None:
            raise
        raise named from exc


def remove_write_leftovers(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Delete the temporary files that atomic writes of ``names`` in ``folder`` left when killed mid-write
    (``.NAME.*.tmp``, as :func:`atomic_write_bytes` names them; the real files are intact). For a job holding its
    folder's lock: nobody else is writing them."""
    import glob

    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(_tmp_stem(name))}.*.tmp"):
            tmp.unlink(missing_ok=True)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` into a temporary file and rename it in place, so a killed run never leaves a torn
    checkpoint (the model, training and finetuning states all go through here)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Replace a JSON-lines file with ``records``, one per line, as they are (a record read back keeps its
    checksum): how a log is cut back to its last checkpoint or a manifest put in order."""
    return atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Lax: a NaN is written as the bare word NaN (Python reads it back). For caches and state this package
    reads back as floats; a file meant for other tools is :func:`atomic_write_strict_json`."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def atomic_write_strict_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Strict JSON for other tools (results, benchmark figures): every NaN or ±inf as null
    (:func:`finite_json`), which jq, JavaScript and strict parsers read; the bare word NaN they refuse."""
    return atomic_write_json(path, finite_json(obj), indent=indent)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def npz_unpacked_bytes(npz: Any) -> int:
    """Bytes an opened ``np.load`` archive's arrays take once unpacked (its zip's declared sizes; nothing is
    read): an .npz is a zip, so a small file can inflate to hundreds of MB, and a reader checks this first."""
    return sum(info.file_size for info in npz.zip.infolist()) if hasattr(npz, "zip") else 0


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sources_digest(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 of the files' bytes, concatenated in the order given: what a cache key needs of the code that
    made a cached result (an edit re-runs it)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_checksum(record: dict) -> str:
    """Checksum of a JSON record without its own ``checksum`` field (canonical key order).

    Taken over the record as it reads back: JSON turns non-string keys into strings, so ``{9: …, 10: …}``
    was summed in the order 9, 10 and read back as "10", "9" (a mismatch: the record was silently dropped),
    and mixed ``int``/``str`` keys made ``sort_keys`` raise TypeError. A record with string keys only
    (every record written so far) reads back as it is, so its checksum is unchanged."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    if not _string_keys(body):
        body = json.loads(json.dumps(body, default=_json_default))
    return sha256_bytes(json.dumps(body, sort_keys=True, default=_json_default).encode("utf-8"))[:16]


def _string_keys(obj: Any) -> bool:
    """Whether every dict key in ``obj`` (nested in dicts, lists and tuples) is already a string.

    A walk with a stack of its own, not recursion: a line nested ~500 deep that ``json.loads`` reads raised
    RecursionError here (two Python frames a level), which ended every reader of that log (``trace``, a finetune
    resume, an export's failures) instead of skipping the line."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def append_jsonl(path: str | os.PathLike, record: dict, checksum: bool = True, durable: bool = True) -> None:
    """Append one record as a line, fsynced. With ``checksum`` the record carries its own checksum.

    ``durable=False``: written and flushed, not fsynced — a killed process keeps every record written (the kernel
    has them), a power cut may lose the last ones. For diagnostics written many times a group (a critique's trace:
    eleven records, eleven fsyncs, about a quarter of a builtin critique's time on a busy disk), not for state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = dict(record)
    if checksum:
        rec["checksum"] = record_checksum(rec)
    line = json.dumps(rec, default=_json_default) + "\n"
    # a full disk: the error names the log (a torn line is dropped by read_jsonl)
    with _errors_naming(path), open(path, "a+b") as fh:
        # a torn last line (a crash mid-append) must not swallow this record: start it on a line of its own
        new = fh.seek(0, os.SEEK_END) == 0
        if not new:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    if new and durable:  # the file's entry in its folder too (see _fsync_folder): a log's first record is kept too
        _fsync_folder(path.parent)


def read_jsonl(path: str | os.PathLike, verify: bool = True) -> list[dict]:
    """Read records, skipping a torn or corrupt line (bad JSON, not a JSON object, or checksum mismatch).

    ``errors="replace"``: a line garbled into bytes that are not UTF-8 (a crash mid-append) no longer stops the
    whole read (a finetune log resume, an export's failures); it is skipped when it is no longer JSON or, for a
    record with a checksum, fails it (a record without one may keep U+FFFD in its strings)."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():  # a folder in the log's place: one line naming it, not a bare IsADirectoryError
        from hmrcritic.errors import InputError

        raise InputError(f"{path} is a folder, not a log file: move it away")
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            # nested too deeply, or a number of more than 4300 digits (Python's int limit raises a bare ValueError,
            # no JSONDecodeError: one such line ended `hmrcritic trace` and a finetune resume): unreadable too
            except (ValueError, RecursionError):
                continue
            if not isinstance(rec, dict):  # `5` or `[...]` parse but are no record
                continue
            try:
                if verify and "checksum" in rec and rec["checksum"] != record_checksum(rec):
                    continue
            except RecursionError:  # deeper than the JSON encoder goes: not a record we wrote
                continue
            out.append(rec)
    return out


def not_a_file_error(p: Path, what: str) -> Exception:
    """Why ``p`` cannot be read as a ``what`` file: a folder, nothing there, or something there that is no regular
    file (a FIFO, a socket, a device; a shell's ``<(…)``). The last was "file not found", for a path that exists."""
    from hmrcritic.errors import InputError

    if p.is_dir():
        return InputError(f"{p} is a folder; give the {what} file")
    if p.exists():
        return InputError(f"{p}: not a regular file (a pipe, socket or device); save the {what} to a file and give "
                          "that")
    return InputError(f"{p}: {what} file not found")


def read_small_json(path: Path, what: str, max_bytes: int, nested_as: str | None = None,
                    number_as: str | None = None) -> Any:
    """The JSON value of a small input file (keypoints, intrinsics), every way it can fail an :class:`InputError`
    naming the file: missing, a folder or pipe, too large to be ``what``, not text, not JSON, nested thousands deep,
    a number of thousands of digits. Read as bytes: json detects UTF-8 with a BOM and UTF-16/32 (Windows tools and
    PowerShell write those), which read_text("utf-8") refused. ``nested_as``/``number_as`` word the last two
    errors ("too deeply to be keypoints", "not a keypoint coordinate")."""
    from hmrcritic.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise not_a_file_error(p, what)
    size = p.stat().st_size
    if size > max_bytes:
        limit = f"{max_bytes // 1_000_000} MB" if max_bytes >= 1_000_000 else f"{max_bytes // 1000} kB"
        raise InputError(f"{p}: {size} bytes is not a{'n' if what[:1] in 'aeiou' else ''} {what} file (at most "
                         f"{limit})")
    try:
        return json.loads(p.read_bytes())
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a JSON text file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:  # nested thousands deep: json's recursion limit, one line instead of a traceback
        raise InputError(f"{p}: JSON nested too deeply to be {nested_as or what}") from None
    except ValueError:  # an integer of over 4,300 digits: Python's int-parsing limit (its message advises changing
        # the interpreter's limit), raised as a bare ValueError, not a JSONDecodeError
        raise InputError(f"{p}: holds a number thousands of digits long, not {number_as or what + ' data'}"
                         ) from None


def read_npz(path: str | os.PathLike, expected: str, max_bytes: int, too_big: str,
             keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` input file (hypotheses, labelled scenes, inputs), every way it can fail one
    :class:`InputError` naming the file and ``expected`` (what it should hold): not an archive, a single ``.npy``,
    an array that is no plain numbers (never read with ``allow_pickle``), or inflating past ``max_bytes`` — an .npz
    is a zip, refused before anything is unpacked (``too_big``: what it then is not). ``keys``: only those are read,
    the others left unread (a tool's pickled metadata beside the arrays must not refuse the file)."""
    from hmrcritic.errors import InputError

    where = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # never suggest allow_pickle: these files hold plain arrays
        raise InputError(f"{where}: not a readable .npz archive of arrays ({type(exc).__name__}); expected "
                         f"{expected}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{where}: a single .npy array, not an .npz archive; expected {expected}")
    with loaded as z:
        size = npz_unpacked_bytes(z)
        if size > max_bytes:
            raise InputError(f"{where}: would take {size / 2**20:.0f} MiB uncompressed (at most {max_bytes >> 20} "
                             f"MiB): {too_big}")
        wanted = None if keys is None else set(keys)
        try:
            return {k: np.asarray(z[k]) for k in z.files if wanted is None or k in wanted}
        except Exception as exc:
            raise InputError(f"{where}: holds an array that is not plain numbers ({type(exc).__name__}); expected "
                             f"{expected}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def newest_mtime(path: str | os.PathLike) -> float:
    """When ``path`` or anything in it was last written: the newest mtime in the tree (0.0 when it is gone).

    A folder's own mtime changes only when an entry directly in it is added or removed, so a folder a command is
    writing deep inside looks untouched by its own mtime."""
    path = Path(path)
    newest = 0.0
    try:
        inside = list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else []
    except OSError:  # removed while listed
        inside = []
    for q in (path, *inside):
        with contextlib.suppress(OSError):  # removed meanwhile
            newest = max(newest, q.lstat().st_mtime)
    return newest


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts). A pid ≤ 0 or one out of range
    (a damaged record) is not a process: ``os.kill`` would signal a process group or raise OverflowError."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


@contextlib.contextmanager
def waiting_lock(lock_path: str | os.PathLike, timeout_s: float, timed_out=None) -> Iterator[None]:
    """Hold the file lock ``lock_path`` for the block, waiting up to ``timeout_s`` for another holder.

    For short critical sections that must not run in two processes at once but must not fail a command either:
    where no lock file can be made (an unwritable folder, a file system without locks) the block runs unlocked;
    a wait that times out raises ``timed_out()`` (an exception naming what waited), or runs unlocked when
    ``timed_out`` is None."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        if timed_out is not None:
            raise timed_out() from None
        yield
        return
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


class LockBusy(Exception):
    """Raised by :func:`exclusive_lock` when another holder has the lock; ``str()`` says who holds it."""


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike, what: str, busy=LockBusy):
    """Hold ``lock_path`` for one long job against every other process on this machine, without waiting.

    A second holder fails at once with ``busy(holder)`` (default :class:`LockBusy`), ``holder`` naming the
    first (``what``, pid, since when) from the record kept beside the lock (same name, ``.json`` suffix), so a
    caller can say who is busy rather than hang for hours. Used for one exploration/import/reset per memory
    and one export per dataset folder."""
    import time

    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    holder = lock_path.with_suffix(".json")
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads(holder.read_text(encoding="utf-8"))
            host = str(who.get("host") or "")
            on = f" on {host}" if host and host != socket.gethostname() else ""
            by = f"{who.get('what')} (pid {who.get('pid')}{on}, since {who.get('since')})"
        except (OSError, ValueError, AttributeError):
            by = "another process"
        raise busy(by) from None
    try:
        # the host too: on a folder shared between machines, "pid N" alone named an unrelated process here, and
        # readers that check whether the holder is alive (memory.store._reset_running) asked about it
        atomic_write_json(holder, {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def finite_json(obj):
    """``obj`` with every NaN or ±inf float as None (JSON null), in dicts and lists at any depth.

    A variant that scored no group (every critique failed: a VLM endpoint down) has NaN means, a failed group a
    NaN in ``per_group_spearman``, a round of only unrankable groups a NaN ``mean_spearman``: ``json.dumps``
    wrote them as the bare word NaN, which is not JSON (jq, JavaScript and strict parsers refuse the whole
    document). null is what ``demo --json`` and the other outputs say for "no value". Numpy scalars and arrays
    are taken as their Python values first (a float32 NaN is no ``float``)."""
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj
