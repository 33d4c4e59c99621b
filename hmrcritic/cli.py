"""The ``hmrcritic`` command line: a thin layer over the library.

Each command group lives in ``hmrcritic/commands/<area>.py`` and registers itself through ``register(app)``,
so the CLI stays a table of contents. Errors the user can cause are :class:`~hmrcritic.errors.HMRCriticError`:
printed as one line, exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import logging
import os
import sys

import typer

import hmrcritic.config  # noqa: F401  (sets PYOPENGL_PLATFORM and offline flags before anything imports pyrender)
from hmrcritic.commands import expand_user_paths
from hmrcritic.config import env_debug
from hmrcritic.errors import HMRCriticError, InputError
from hmrcritic.redact import printable

app = typer.Typer(
    name="hmrcritic",
    help="Diffusion human mesh recovery + a critique agent + group preference alignment, offline-first.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Order is the order of `hmrcritic --help`.
COMMAND_MODULES = [
    "hmrcritic.commands.demo",
    "hmrcritic.commands.doctor",
    "hmrcritic.commands.body",
    "hmrcritic.commands.data",
    "hmrcritic.commands.model",
    "hmrcritic.commands.agent",
    "hmrcritic.commands.memory",
    "hmrcritic.commands.runs",
    "hmrcritic.commands.explore",
    "hmrcritic.commands.alignment",
    "hmrcritic.commands.reproduce",
]

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command group not built yet must not break the others
        if exc.name != _name:
            raise
        continue
    _module.register(app)


def _print_version(value: bool) -> None:
    if value:
        from hmrcritic import __version__

        print(f"hmrcritic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors (or HMRCRITIC_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """(``--debug`` is read from the command line by :func:`main` before the app runs: nothing to do here.)"""


expand_user_paths(app)  # every command's paths take ``~`` as the home folder (a quoted ``~/x`` reaches us as is)


def _wrap_once(owner, name: str, wrap) -> bool:
    """Replace ``owner.name`` (a typer internal the help is drawn with) by ``wrap(original)``, once per process: help
    may be drawn many times in one process (tests, a notebook), and a wrapper wrapped again applied itself twice.
    False, leaving typer as it draws, where the internal is not there (another typer) or already wrapped. A
    property is marked on its getter (a property object takes no attributes)."""
    original = getattr(owner, name, None)
    if original is None or getattr(getattr(original, "fget", original), "hmrcritic_wrapped", False):
        return False
    wrapper = wrap(original)
    # outside main() (another typer program in this process) the original draws: see _IN_MAIN
    if isinstance(original, property):
        wrapper = property(lambda self, inner=wrapper.fget: (inner if _IN_MAIN else original.fget)(self))
    elif not isinstance(original, type):
        wrapper = functools.wraps(original)(lambda *a, inner=wrapper, **k: (inner if _IN_MAIN else original)(*a, **k))
    getattr(wrapper, "fget", wrapper).hmrcritic_wrapped = True
    setattr(owner, name, wrapper)
    return True


def _fold_help_cells() -> None:
    """``--help`` at 80 columns folds a long word onto the next line instead of cutting it with "…".

    typer's option table cut what did not fit its cell: finetune's help showed "--num-generatio…", "--base-loss-wei…"
    and "--checkpoint-ev…" (option names a user could not type from the page), critique's variable names and
    "COCO-WholeBody-13…". The type column already folds; the name and help cells now do too (typer's own renderers,
    their Text marked to fold). Left as typer draws it where its internals are not the ones this was written for."""
    try:
        from rich.text import Text
        from typer import rich_utils

        highlighters = {name: getattr(rich_utils, name) for name in ("highlighter", "negative_highlighter")}
    except (ImportError, AttributeError):
        return

    def fold(renderable):
        for text in (renderable, *getattr(renderable, "renderables", ())):
            if isinstance(text, Text):
                text.overflow = "fold"
        return renderable

    def folding_help(get_help):
        return lambda *args, **kwargs: fold(get_help(*args, **kwargs))

    if not _wrap_once(rich_utils, "_get_parameter_help", folding_help):
        return
    for name, highlighter in highlighters.items():
        folding = type(f"Folding{type(highlighter).__name__}", (type(highlighter),),
                       {"__call__": lambda self, *a, **k: (fold if _IN_MAIN else (lambda r: r))(
                           super(type(self), self).__call__(*a, **k))})
        setattr(rich_utils, name, folding())


def _untyped_flags() -> None:
    """``--help`` draws no type beside a flag: typer's option table showed ``--json <bool>``, ``--help <bool>``,
    ``--resume/--no-resume <bool>``, read as options wanting a value (``--json true``, which is then an unexpected
    extra argument). typer's plain help already leaves a flag's type out; its table now does too. Options that
    take a value (and counting flags, ``-vvv``) keep theirs.

    The one reader of ``TyperOption.display_type_rich`` besides that table is typer's plain help, and only for
    options that are not flags: parsing, errors and completion never call it, so this changes what ``--help``
    draws and nothing else. Applied as :func:`_fold_help_cells` is, only where help may be drawn."""
    try:
        from typer.core import TyperOption
    except ImportError:  # another typer: left as it draws it
        return

    def untyped(shown):
        def display_type_rich(self, ctx):
            if getattr(self, "is_flag", False) and not getattr(self, "count", False):
                return None  # the table appends nothing for None
            return shown(self, ctx)
        return display_type_rich

    _wrap_once(TyperOption, "display_type_rich", untyped)


def _command_lines_joined() -> None:
    """A command's line in its group's list (``hmrcritic --help``, ``memory --help``) is one paragraph, as on the
    command's own page: typer kept the docstring's line breaks there, so "runs prune" read "…evaluation caches,"
    then "then compact…" on a line of its own, and "memory export" broke after "explored" — sentences cut where
    the source wraps, not where the terminal does. A first paragraph starting with ``\b`` (click's "keep my
    lines") is left as written. Applied as :func:`_fold_help_cells` is, only where help may be drawn."""
    try:
        import inspect

        from typer import rich_utils
    except ImportError:  # another typer: left as it draws it
        return

    def joining(make):
        def joined(*args, help_text: str = "", **kwargs):
            first, sep, rest = inspect.cleandoc(help_text).partition("\n\n")
            if not first.startswith("\b"):
                first = first.replace("\n", " ")
            return make(*args, help_text=first + sep + rest, **kwargs)
        return joined

    _wrap_once(rich_utils, "_make_command_help", joining)


def _argument_names_upper() -> None:
    """A positional argument is named as click, man pages and the docstrings here name it: ``QUERY``, ``RUN_ID``.

    typer drew its own name in three ways: ``memory search [OPTIONS] {query}`` on the usage line (braces no shell
    user reads as "required"), ``query`` in the arguments table, and "Missing argument 'query'." in the error,
    while the command's text said "Rules nearest in meaning to QUERY" and ``trace``'s "with a RUN_ID". Now the
    name is the parameter's in capitals (an explicit ``metavar`` as given), required ones bare and optional ones
    in brackets (``[RUN_ID]``), ``...`` after one taking several — in rich and plain help and in usage errors
    alike. Display only: typer reads ``display_name_raw`` and ``_usage_display_name`` to draw, never to parse.
    Cheap (no rich import), so applied on every run: usage errors print the usage line too."""
    try:
        from typer.core import TyperArgument
    except ImportError:  # another typer: left as it draws it
        return
    if not isinstance(getattr(TyperArgument, "display_name_raw", None), property) or \
            not callable(getattr(TyperArgument, "_usage_display_name", None)):
        return

    def upper(raw):
        def display_name_raw(self) -> str:
            if not _IN_MAIN or self.metavar is not None or not self.name:
                return raw.fget(self)
            return self.name.upper()
        return property(display_name_raw)

    def usage(original):
        def _usage_display_name(self) -> str:
            if not _IN_MAIN:  # another typer program in this process: as its typer draws it
                return original(self)
            name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return name + ("..." if self.nargs != 1 else "")
        return _usage_display_name

    _wrap_once(TyperArgument, "display_name_raw", upper)
    _wrap_once(TyperArgument, "_usage_display_name", usage)


def _empty_paths_refused() -> None:
    """A path option or argument given as an empty (or blank) string is refused with one line, before the command
    runs.

    The parser reads ``""`` as ``Path("")``, which is ``Path(".")``: ``--out "$RUN"`` with ``RUN`` unset wrote an
    export's dataset.json, shards and locks, an exploration's Chroma files or a reproduce run into the current folder
    (a checkout, a home), and ``memory stats --memory-dir ""`` read the current folder as a memory. ``.`` typed as
    such is still the current folder. Checked on the raw value, the only place the two differ: typer's
    ``process_value`` (its coercion), for every parameter whose type is a path. Applied on every run of
    :func:`main`, as :func:`_argument_names_upper` is; another typer program in this process is left as it was."""
    try:
        from typer.core import _TyperParameter
    except ImportError:  # another typer: left as it parses
        return
    if not callable(getattr(_TyperParameter, "process_value", None)):
        return

    def refusing(original):
        def process_value(self, ctx, value):
            if _is_path_param(self):  # (_wrap_once calls this only inside main())
                for item in value if isinstance(value, list | tuple) else (value,):
                    if isinstance(item, str) and not item.strip():
                        name = self.opts[0] if self.opts and self.opts[0].startswith("-") else \
                            (self.name or "PATH").upper()
                        raise InputError(f"{name} is empty: give a path (\".\" for the current folder; a shell "
                                         "variable that is not set reads as empty)")
            return original(self, ctx, value)
        return process_value

    _wrap_once(_TyperParameter, "process_value", refusing)


def _is_path_param(param) -> bool:
    """Whether a typer parameter's values are paths (``Path``, ``Path | None``, ``list[Path]``)."""
    import typing
    from pathlib import PurePath

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kinds = typing.get_args(annotation) or (annotation,)
    return any(isinstance(k, type) and issubclass(k, PurePath) for k in kinds)


def _block_kept(paragraph: str, width: int) -> str:
    """``paragraph`` (lines of an example block) as click's "keep my lines" paragraph (a ``\\b`` line first), each
    line that does not fit ``width`` folded onto lines indented 4 more than its own (click keeps ``\\b`` lines
    as they are, and a long example ran past the terminal's edge). Folded at spaces only: an option name or a path
    is never cut at its hyphen or slash."""
    import textwrap

    out = []
    for line in paragraph.splitlines():
        lead = line[:len(line) - len(line.lstrip())]
        out.extend(textwrap.wrap(line.strip(), width=max(width, len(lead) + 20), initial_indent=lead,
                                 subsequent_indent=lead + "    ", break_long_words=False,
                                 break_on_hyphens=False) or [""])
    return "\n".join(["\b", *out])


def _plain_help_blocks_kept() -> None:
    """Plain ``--help`` keeps an example block's lines. Plain is ``TYPER_USE_RICH=0`` (or another "off" word), which
    typer reads once at import: click draws the help then. ``NO_COLOR``, ``TERM=dumb`` and a piped stdout keep
    rich's layout, only without colour.

    click rewraps every paragraph of a command's text, so ``export``'s four example commands ran together into
    one paragraph ("Examples:   hmrcritic export --split wild … --out runs/wild-prefs   hmrcritic export …"), and
    so did ``finetune``'s, ``reproduce``'s, ``evaluate``'s and ``sample``'s — commands nobody could copy. A
    paragraph after the first with an indented line is a block written line by line (the docstrings' examples):
    it is handed to click marked ``\\b`` (click's own "keep my lines"), its long lines folded at spaces. Prose
    paragraphs are rewrapped as before, and rich help (typer's, which keeps these lines itself) never calls this
    (``HelpFormatter.write_text``: the text of plain help and its epilog only). Applied only where help may be
    drawn."""
    try:
        from typer._click.formatting import HelpFormatter
    except ImportError:  # another typer: left as it draws it
        return

    def keeping(write_text):
        def kept(self, text: str) -> None:
            first, *rest = text.split("\n\n")
            width = self.width - self.current_indent
            rest = [_block_kept(p, width) if _is_block(p) and not p.startswith("\b") else p for p in rest]
            return write_text(self, "\n\n".join([first, *rest]))
        return kept

    _wrap_once(HelpFormatter, "write_text", keeping)


def _is_block(paragraph: str) -> bool:
    """A paragraph written line by line (an indented line: the docstrings' example commands), or click-marked."""
    return paragraph.startswith("\b") or any(line[:1].isspace() for line in paragraph.splitlines())


def _rich_help_paragraphs() -> None:
    """Rich ``--help``: a command's later paragraphs break where the terminal does, and examples keep their indent.

    typer joins the first paragraph's lines but kept every later one's as the source wraps them: ``reproduce``
    read "…skips finished stages, and a" / "changed setting re-runs…" (cut at the docstring's column 100, at any
    terminal width), ``learning-curve``, ``explore`` and ``doctor`` likewise — what :func:`_command_lines_joined`
    mended in the command lists. A prose paragraph is now one line for rich to wrap; a block (:func:`_is_block`)
    keeps its lines. typer also dedented the later paragraphs together (``inspect.cleandoc``): where the examples
    were the only one ("Examples:" then "  hmrcritic …", in ``critique``, ``finetune``, ``trace``), they lost their
    indent and read as prose; a blank first line makes "Examples:" count in that dedent, which removes it again.
    Markdown mode is left as typer draws it. Applied as :func:`_fold_help_cells` is, only where help may be
    drawn."""
    try:
        from typer import rich_utils
    except ImportError:  # another typer: left as it draws it
        return

    def mending(fix):
        def mended(paragraphs, markup_mode):
            if markup_mode != "rich":
                return fix(paragraphs, markup_mode)
            return "\n" + fix([p if _is_block(p) else p.replace("\n", " ") for p in paragraphs], markup_mode)
        return mended

    _wrap_once(rich_utils, "_fix_linebreaks", mending)


def _plain_command_lines_whole() -> None:
    """Plain help lists a command with its whole first paragraph, as rich help does (:func:`_command_lines_joined`).

    click cut each to one line and "...": ``hmrcritic --help`` read "doctor  Check the installation: Python,
    torch, GL rendering,..." and "export  Sample, critique and write scored hypothesis groups as...", where the
    command's own page and rich help say the whole sentence. click's list wraps the full text in its column.
    ``Command.get_short_help_str`` is read by the plain command list alone here (rich lists from ``help``;
    shell completion is off). A command with its own ``short_help``, or deprecated, is left to click. Applied
    only where help may be drawn."""
    try:
        import inspect

        from typer._click.core import Command
    except ImportError:  # another typer: left as it draws it
        return

    def whole(short_help):
        def get_short_help_str(self, limit: int = 45) -> str:
            if self.short_help or not self.help or self.deprecated:
                return short_help(self, limit)
            first = inspect.cleandoc(self.help).partition("\f")[0].split("\n\n")[0]
            return " ".join(word for word in first.split() if word != "\b")
        return get_short_help_str

    _wrap_once(Command, "get_short_help_str", whole)


def _plain_help_hyphens_kept() -> None:
    """Plain ``--help`` folds its lines at spaces only, as rich help does: click's wrapper also broke at hyphens,
    so option help read "(with --ray-" / "address)", "--base-url, --vlm-" / "model)" — an option a user types
    from the page cut in two. ``typer._click._textwrap.TextWrapper`` is used by click's help formatting alone
    (``formatting.wrap_text``: help text, option and command lists, the usage line). Applied only where help may
    be drawn."""
    try:
        from typer._click import _textwrap
    except ImportError:  # another typer: left as it draws it
        return

    def no_hyphen_breaks(wrapper):
        class SpacesOnlyTextWrapper(wrapper):
            def __init__(self, *args, **kwargs):
                if _IN_MAIN:
                    kwargs.setdefault("break_on_hyphens", False)
                super().__init__(*args, **kwargs)
        return SpacesOnlyTextWrapper

    _wrap_once(_textwrap, "TextWrapper", no_hyphen_breaks)


def _print_traceback() -> None:
    """``--debug``: the traceback of the exception being handled, with secrets masked and terminal controls shown
    as "?" (hmrcritic.redact.printable), as in the error line under it: the traceback quotes the same message
    (a tag, a file name, a server's answer), and its escape sequences reached the terminal there."""
    import traceback

    print(printable(traceback.format_exc()), file=sys.stderr, end="")


_OS_HINTS = {
    FileExistsError: "a file is where a folder is needed",
    NotADirectoryError: "a file is where a folder is needed",
    IsADirectoryError: "a folder is where a file is needed",
    PermissionError: "check the folder's permissions",
}


def _under_home(path) -> bool:
    """``path`` is the toolkit's home folder, inside it or one of the folders above it (``HOME=/nonexistent``)."""
    from pathlib import Path

    from hmrcritic import config

    try:
        p, home = Path(path).expanduser().absolute(), config.home_dir().expanduser().absolute()
    except (TypeError, ValueError, RuntimeError, HMRCriticError):  # HMRCRITIC_HOME an address: no hint, no crash
        return False
    return p == home or home in p.parents or p in home.parents


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_STDOUT_AT_START: list[tuple[int, int] | None] = []  # fd 1's identity when main() began


def _stdout_gone() -> bool:
    """Whether nothing reads stdout any more (``| head -1`` exited): the write end of a pipe whose readers are all
    gone polls as an error; and rich, on that broken pipe, points fd 1 at /dev/null before it exits, so a stdout
    that is no longer the file it was at the start went the same way. Anything else — a terminal, a file, a pipe
    still read — is not gone."""
    import select

    if _STDOUT_AT_START and _fd_identity(1) != _STDOUT_AT_START[-1]:
        return True
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (not Linux/macOS), no stdout: as typer assumed
        return True


def _stdout_failed(exc: OSError) -> bool:
    """Whether ``exc`` is stdout refusing the command's output (``> /dev/full``, a full disk or quota under a
    redirected stdout, an I/O error on it), rather than a file the command wrote.

    Such a write carries no file name, and the line said only "No space left on device": read as the disk (or the
    memory) of the work being full. The files the toolkit writes are named in their errors (hmrcritic.io), so an
    error without a name is checked against stdout itself: the output still buffered in it, then a write of
    nothing to its descriptor (which /dev/full and a broken device refuse), must fail with the same errno. A broken
    pipe is left to typer and :func:`_stdout_gone`. Not recognised: a full disk under an unbuffered stdout
    (``PYTHONUNBUFFERED=1``), which accepts an empty write again — its line stays the true "No space left"."""
    stream = sys.stdout
    if exc.filename is not None or exc.errno in (None, errno.EPIPE) or stream is None:
        return False
    try:
        stream.flush()
        os.write(stream.fileno(), b"")
    except OSError as probe:  # io.UnsupportedOperation (a capture without a descriptor) has no errno
        return probe.errno == exc.errno
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
    return False


def _stdout_error(exc: OSError) -> str:
    """The line for :func:`_stdout_failed`: what failed (writing the output to stdout), why, and where stdout
    points where the system says (``/dev/full``, the file it was redirected to)."""
    where = ""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        where = os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    why = exc.strerror or str(exc) or type(exc).__name__
    return f"writing the command's output to stdout failed: {why}" + (f" (stdout is {where})" if where else "")


def _drop_stdout() -> None:
    """Point the failed stdout at /dev/null and drop what it still buffers: Python flushes stdout again on exit,
    and that second failure printed "Exception ignored in: <_io.TextIOWrapper name='<stdout>'…>" after the error
    line and turned the exit code into 120. (Python's advice for a broken pipe; only for the process's own
    stdout — a stream without a descriptor never reaches here.)"""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
        sys.stdout.flush()


def _flush_stdout(rc: int) -> int:
    """Flush stdout before returning, so that output which failed to go out is said as :func:`_stdout_error`
    (exit 2 where the command had succeeded) rather than by Python's exit ("Exception ignored …", exit 120). A
    broken pipe is left as it was (``| head``: the reader has what it wanted)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return rc
        print(f"error: {printable(_stdout_error(exc))}", file=sys.stderr)
        _drop_stdout()
        return rc or 2
    except (AttributeError, ValueError):  # a replaced or closed stream
        return rc
    return rc


def _os_error(exc: OSError) -> str:
    """One line naming the path and what to do, for the errors of the file system."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    hint = next((h for t, h in _OS_HINTS.items() if isinstance(exc, t)), "")
    if exc.filename and (isinstance(exc, PermissionError) or exc.errno == errno.EROFS) and _under_home(exc.filename):
        # the default folder a user never chose (no or read-only home, a shared account): name the way out
        hint = (hint + ", or " if hint else "") + "set HMRCRITIC_HOME to a writable folder"
    if exc.filename and isinstance(exc, NotADirectoryError | FileExistsError):
        hint = _file_in_the_way(exc.filename) or hint
    text = exc.strerror or str(exc) or type(exc).__name__
    return text + (f": {paths}" if paths else "") + (f" ({hint})" if hint else "")


def _file_in_the_way(path) -> str:
    """"<file> is a file where a folder is needed[, HMRCRITIC_X names it …]" for the file on ``path``'s way, or "".

    ``HMRCRITIC_HOME`` naming a stray file: every command failed with "Not a directory: <home>/cache/mannequin",
    a path the user never set, without the file in the way or the variable that put it there."""
    from pathlib import Path

    from hmrcritic import config

    # the path as the system call took it: a "~" there is a folder of that name (config and the CLI expand theirs),
    # and expanding it raised in this error handler (RuntimeError for "~nouser", TypeError for a bytes filename,
    # PermissionError from a stat), which replaced the one-line error it explains with an unexpected one
    try:
        p = Path(os.fsdecode(path)).absolute()
        blocker = next((q for q in (p, *p.parents) if q.exists() and not q.is_dir()), None)
    except (TypeError, ValueError, OSError):
        return ""
    if blocker is None:
        return ""
    named = {"HMRCRITIC_HOME": config.home_dir, "HMRCRITIC_CACHE": config.cache_dir, "HMRCRITIC_DATA": config.data_dir,
             "HMRCRITIC_MEMORY": config.memory_dir, "HMRCRITIC_RUNS": config.runs_dir}
    for var, folder in named.items():
        try:
            if os.environ.get(var, "").strip() and folder().expanduser().absolute() == blocker:
                return f"{blocker} is a file, where a folder is needed: {var} names it; set {var} to a folder"
        except Exception:  # noqa: BLE001 - a hint must not hide the error it explains
            continue
    return f"{blocker} is a file, where a folder is needed"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or replaced streams
        return False


def _validation_error(exc, argv: list[str] | None = None) -> str:
    """A pydantic ValidationError as one line: each bad setting, why, and the value given.

    An agent setting (AgentConfig) is named with its ``HMRCRITIC_*`` variable when that is set: most commands
    take these settings only from the environment, and "proto_level: … (got 2.0)" named a field the user never
    typed (they wrote ``HMRCRITIC_PROTO_LEVEL=2``). A setting typed as a flag (``evaluate-critic
    --max-reflections -1``, ``explore --ucb-c -1``) is named with that flag for the same reason."""
    typed = {a.split("=", 1)[0] for a in argv or () if a.startswith("--")}
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ())) or exc.title
        loc = err.get("loc", ())
        if exc.title == "AgentConfig" and len(loc) == 1:
            var = "HMRCRITIC_MEMORY" if loc[0] == "memory_dir" else f"HMRCRITIC_{str(loc[0]).upper()}"
            flag = f"--{str(loc[0]).replace('_', '-')}"
            if flag in typed:
                where += f" ({flag})"
            elif os.environ.get(var, "").strip():
                where += f" ({var}={os.environ[var]!r} in the environment)"
        parts.append(f"{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
    return f"invalid {exc.title} setting: " + "; ".join(parts)


def _tolerant_streams() -> None:
    """Let stdout/stderr print what they cannot encode as ``\\u03c1`` instead of raising.

    Messages and reports carry ρ, τ, →, ≥ and box drawing; with ``PYTHONIOENCODING=ascii`` or a Latin-1 locale
    the first such character was a UnicodeEncodeError: ``--help`` and ``doctor`` died half-printed. UTF-8
    streams and streams with a handler already set (tests' captures) are left alone; ``--json`` is ASCII anyway.
    ``surrogateescape`` is no such handler: it is what Python gives stdout under ``LC_ALL=C PYTHONUTF8=0`` (an old
    cron or service), and it raises on ρ as ``strict`` does (``memory rules`` died there).
    """
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding in ("utf8", "utf8sig") or getattr(stream, "errors", None) not in ("strict", "surrogateescape"):
            continue
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, turn user errors into one line and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _STDOUT_AT_START[:] = [_fd_identity(1)]
    _tolerant_streams()
    debug = "--debug" in argv or env_debug()
    # help may be drawn: only then (rich's import costs 60-100 ms); a group named without its command draws its help
    # (no_args_is_help) with --debug too: `hmrcritic memory --debug` was drawn without these
    if len([a for a in argv if a != "--debug"]) <= 1 or {"--help", "-h"} & set(argv):
        _fold_help_cells()
        _untyped_flags()
        _command_lines_joined()
        _plain_help_blocks_kept()
        _rich_help_paragraphs()
        _plain_command_lines_whole()
        _plain_help_hyphens_kept()
    _argument_names_upper()  # usage errors print the usage line too
    _empty_paths_refused()
    _IN_MAIN.append(True)
    try:
        with _warnings_as_lines(debug), _log_lines_scrubbed(), _terminate_as_interrupt():
            return _flush_stdout(_main(argv, debug))
    except KeyboardInterrupt:  # a signal between the command's own handling and the handler's removal
        return 143 if _TERMINATED else 130
    finally:
        _IN_MAIN.pop()


# one entry per main() running: the wraps of typer's classes draw hmrcritic's way only then, and leave another
# typer program in the same process (a notebook, a test suite) as its typer draws it
_IN_MAIN: list[bool] = []


# The signal that stopped this run (SIGTERM), set by _terminate_as_interrupt's handler: the exit code and line say
# "terminated" (143, the shell's 128 + 15) instead of Ctrl-C's "interrupted" (130).
_TERMINATED: list[int] = []


class Terminated(KeyboardInterrupt):
    """The KeyboardInterrupt that SIGTERM raises (:func:`_terminate_as_interrupt`): everything that handles Ctrl-C
    handles it, and what records the interrupt can say which signal it was. A bare KeyboardInterrupt has no message:
    a critique's trace read "error: KeyboardInterrupt: " for a run that a service manager stopped."""

    signal_name = "SIGTERM"


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (``timeout``, ``kill``, systemd, ``docker stop``, CI cancelling a job) stops a command as Ctrl-C does.

    Python's default SIGTERM ends the process on the spot, running no ``finally``: a progress bar left the
    terminal's cursor hidden, an atomic write in progress left its temporary file (``.ft.pt.state.pt.x1y2.tmp``,
    a model's size, which nothing removes) and nothing said which step a re-run resumes from. The first SIGTERM
    raises KeyboardInterrupt, so everything a Ctrl-C does on the way out is done; a second one kills at once (the
    default again). A handler someone else set (or an ignored SIGTERM) is left alone, and the previous handler is
    back when the command returns (in-process callers)."""
    import signal
    import threading

    _TERMINATED.clear()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_term(signum, frame):
        _TERMINATED.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _warnings_as_lines(debug: bool):
    """Warnings as ``warning: <message>`` lines on stderr, like the errors, instead of Python's two-line
    ``/path/to/hmrcritic/hmr/data.py:785: UserWarning: …`` plus the source line that raised it (``--debug`` keeps
    Python's form). Secrets masked, terminal controls shown as "?"; in-process callers get theirs back after."""
    import warnings

    before = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"warning: {printable(message)}\n"

    def python_form(message, category, filename, lineno, line=None) -> str:
        # ``--debug``: Python's form, masked too (README: the ``--debug`` output goes through the scrubber). It
        # was printed as raised: a warning quoting a Chroma or judge address (``http://user:pw@host``) showed
        # the password, where the same text as an error line or a traceback was masked
        return printable(before(message, category, filename, lineno, line))

    # formatwarning, not showwarning: a caller recording warnings (``catch_warnings(record=True)``, pytest.warns)
    # still gets them, and Python's own writer keeps coping with a closed stderr
    warnings.formatwarning = python_form if debug else one_line
    try:
        yield
    finally:
        warnings.formatwarning = before


class _ScrubbedLastResort(logging.Handler):
    """Python's last-resort handler (``logging.lastResort``: WARNING and above, the message alone, on the stderr of
    the moment) with secrets masked and terminal controls shown as "?" (:func:`hmrcritic.redact.printable`)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(printable(self.format(record)) + "\n")  # the message (and a traceback it carries)
        except Exception:  # a closed stderr, a message that cannot be formatted: as logging's own handlers do
            self.handleError(record)


@contextlib.contextmanager
def _log_lines_scrubbed():
    """Log records no handler takes, printed scrubbed while a command runs.

    Python prints such records (WARNING and above) through ``logging.lastResort`` as they are: LangSmith's client
    logged "Failed to batch ingest runs: … for url: http://user:password@host/runs/batch" with the password of
    ``LANGSMITH_ENDPOINT`` in full, where the same text as a warning or an error line was masked. The last resort
    itself is replaced (not a handler added to the root logger): Python still calls it only for records no handler
    of their logger's chain took — a library's own NullHandler keeps it silent, a logger that does not propagate
    reaches it too, and a ``logging.basicConfig()`` meanwhile still configures. In-process callers get theirs back."""
    before, logging.lastResort = logging.lastResort, _ScrubbedLastResort()
    try:
        yield
    finally:
        logging.lastResort = before


_RESUME = ("the long commands (train-base, explore, learning-curve, export, finetune, reproduce, critique) keep what "
           "they finished: run the same command again to resume")
_INTERRUPTED = "interrupted; " + _RESUME


def _say_interrupted() -> int:
    """The line and exit code of a run stopped by Ctrl-C (130) or by SIGTERM (143)."""
    if _TERMINATED:
        print("terminated (SIGTERM); " + _RESUME, file=sys.stderr)
        return 143
    print(_INTERRUPTED, file=sys.stderr)
    return 130


def _main(argv: list[str], debug: bool) -> int:
    if "--debug" in argv:  # an app-level option: accepted after the command too (`hmrcritic sample … --debug`)
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    try:
        rv = app(args=argv, standalone_mode=False)
    except HMRCriticError as exc:
        if debug:
            _print_traceback()
        print(f"error: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        cause = exc.__context__
        if code == 1 and isinstance(cause, OSError) and cause.errno == errno.EPIPE and not _stdout_gone():
            # typer turns ANY broken pipe inside a command into a silent exit 1 (meant for `| head -1`); one from
            # elsewhere — a worker process that died, a socket — ended the command without a word
            if debug:
                _print_traceback()  # the broken pipe, then the exit typer made of it
            print(f"error: {printable(_os_error(cause))} (a pipe to another process or connection closed; not "
                  "stdout)", file=sys.stderr)
            return 2
        if code == 130 and _TERMINATED:  # export and finetune said what they kept; the code says SIGTERM
            return 143
        if code is not None and not isinstance(code, int):
            # ``sys.exit("message")`` (a library's way to stop): Python prints the message and exits 1. int() of
            # it raised a ValueError out of this handler: a traceback, the message unscrubbed, and exit 1 only by
            # the interpreter's accident. Said as every error line is (scrubbed), exit 1: an unexpected stop
            print(f"error: {printable(code)}", file=sys.stderr)
            return 1
        return int(code or 0)
    except typer.Abort as exc:
        # a question (runs prune, memory reset) ends in Abort on Ctrl-C (or SIGTERM) and at the end of stdin;
        # typer's confirm drops the cause ("from None") but keeps it as the context. Only an interrupt exits as
        # one (130, 143): a question nobody answered is a refusal, 1, as a "n" is (commands.confirm_or_stop)
        if isinstance(exc.__context__, KeyboardInterrupt):
            print("\naborted: nothing changed", file=sys.stderr)  # on its own line, not after "[y/N]:"
            return 143 if _TERMINATED else 130
        if not _is_terminal(sys.stdin):
            # a question with nothing to answer it — a script, cron, CI: a bare "aborted" after the prompt did
            # not say that the flag exists or that nothing was changed
            print("\naborted: nothing changed (stdin is not a terminal and gave no \"y\"); add --yes to go ahead",
                  file=sys.stderr)
        else:
            print("\naborted: nothing changed", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the long commands keep what they finished and resume from it
        return _say_interrupted()
    except OSError as exc:  # a file where a folder should be, no permission, disk full...
        if debug:
            _print_traceback()
        if _stdout_failed(exc):  # `> /dev/full`: the output, not a file of the work
            print(f"error: {printable(_stdout_error(exc))}", file=sys.stderr)
            _drop_stdout()
            return 2
        print(f"error: {printable(_os_error(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # click usage errors and the like
        import click
        import pydantic

        # typer ships its own copy of click (typer._click), whose exceptions are not click's: match by class name
        if isinstance(exc, click.ClickException) or any(c.__name__ == "ClickException" for c in type(exc).__mro__):
            # scrubbed like every other error line: a usage error quotes what was typed, and "Got unexpected extra
            # argument(s) (http://bob:pw@host:8000)" (an address or a key pasted without its option) showed it whole
            import io

            shown = io.StringIO()
            exc.show(file=shown)
            sys.stderr.write(printable(shown.getvalue()))
            return exc.exit_code
        if isinstance(exc, pydantic.ValidationError):  # a setting out of range (AgentConfig and the like)
            if debug:
                _print_traceback()
            print(f"error: {printable(_validation_error(exc, argv))}", file=sys.stderr)
            return 2
        if debug:
            _print_traceback()
            return 1
        print(f"error: {type(exc).__name__}: {printable(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    # With standalone_mode=False click returns typer.Exit's code instead of raising it. typer turns Ctrl-C into
    # a silent Exit(130) itself (the KeyboardInterrupt branch above never saw it), so 130 is said here; commands
    # that say more about what they kept (export, finetune) leave by SystemExit(130), caught above, not by this.
    if rv == 130:
        return _say_interrupted()
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
