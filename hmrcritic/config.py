"""Settings with environment fallbacks.

Every folder and endpoint the toolkit uses is resolved here, once, so that tests can point the whole
toolkit at a temporary home with one variable (``HMRCRITIC_HOME``) and so that ``doctor`` can print what
is in use. The API key is read from the environment when needed and never stored on a settings object
that could be printed or serialised.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path


def _default_env(name: str, value: str) -> None:
    """``os.environ[name] = value`` unless the user set it. An empty value (``export PYOPENGL_PLATFORM=`` in a
    script) counts as unset, as everywhere else in these settings: ``setdefault`` kept it, and PyOpenGL then
    refused to render at all ("Unsupported PyOpenGL platform: ").

    A value set is kept without the spaces and line ending around it, as every other variable here: PyOpenGL and
    pyrender read it as it is, and ``PYOPENGL_PLATFORM=egl\r`` (a Windows env file) failed every render with
    "Unsupported PyOpenGL platform: egl"."""
    given = os.environ.get(name, "")
    if given != (given.strip() or value):
        os.environ[name] = given.strip() or value


# Pyrender must see the GL platform before it is imported anywhere. Respect a user's choice (osmesa).
_default_env("PYOPENGL_PLATFORM", "egl")
# Nothing in this project may download at run time.
_default_env("HF_HUB_OFFLINE", "1")
_default_env("TRANSFORMERS_OFFLINE", "1")
_default_env("ANONYMIZED_TELEMETRY", "False")


def env_number(name: str, default, kind: type = float, minimum: float | None = None, above: bool = False,
               maximum: float | None = None):
    """``kind(os.environ[name])``, or ``default`` when unset or empty; an InputError naming the variable when the
    value is not a (finite) number, is below ``minimum`` (at or below it with ``above``) or above ``maximum``."""
    import math

    from hmrcritic.errors import InputError

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        digits = raw.strip()[1:] if raw.strip()[0] in "+-" else raw.strip()
        if digits.isdecimal():  # an integer of more digits than Python converts (4300): "not an integer", all of it
            raise InputError(f"{name}={raw.strip()[:20]!r}… ({len(digits)} digits) is too large") from None
        raise InputError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond any float (``HMRCRITIC_VLM_CONCURRENCY=1000…0``): it was a traceback
        raise InputError(f"{name}={raw.strip()[:20]!r}… ({len(raw.strip())} digits) is too large") from None
    if not finite:
        raise InputError(f"{name}={raw!r} must be a finite number")
    if minimum is not None and (value <= minimum if above else value < minimum):
        raise InputError(f"{name}={raw!r} must be {'>' if above else '≥'} {minimum:g}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name}={raw!r} must be ≤ {maximum:g}")
    return value


_TRUE, _FALSE = ("1", "true", "yes", "on", "y"), ("0", "false", "no", "off", "n")


def env_flag(name: str, default: bool) -> bool:
    """A yes/no variable: unset or empty → ``default``; anything but 1/0, true/false, yes/no, on/off is an error
    (a typo like "ture" used to mean False)."""
    from hmrcritic.errors import InputError

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise InputError(f"{name}={raw!r} is not a yes/no value (1/0, true/false, yes/no, on/off)")


def env_chroma_url() -> str | None:
    """``HMRCRITIC_CHROMA_URL`` as meant: spaces and a Windows line ending around it dropped, a blank one unset.
    Read raw in eight places, ``HMRCRITIC_CHROMA_URL=" "`` (an env file's empty slot) tried to reach "a Chroma
    server at ' '" in every command that opens a memory, instead of using the memory on disk."""
    return (os.environ.get("HMRCRITIC_CHROMA_URL") or "").strip() or None


def env_debug() -> bool:
    """``HMRCRITIC_DEBUG``: tracebacks for errors. Read inside the error handler, so it never raises: a value
    that is not a yes-value is off (``true`` and ``1\r`` were off too, silently, when only "1" counted)."""
    return (os.environ.get("HMRCRITIC_DEBUG") or "").strip().lower() in _TRUE


def _env_path_value(name: str) -> str:
    """A path variable as meant: without the line ending a Windows-edited env file (``docker --env-file``, a
    systemd EnvironmentFile) leaves on it. ``HMRCRITIC_HOME=/data/hm\\r`` made a new, empty home named with a
    carriage return beside the real one, and the memory and data learnt there were silently out of sight.

    Nor with the spaces around it, and a blank one is unset (as every number, flag, key and model variable):
    ``HMRCRITIC_HOME=" "`` made a home named by a space in whatever folder a command ran from, and
    ``HMRCRITIC_BODY_MODEL=" "`` failed every command with "body model file not found:  "."""
    return (os.environ.get(name) or "").strip()


def _env_path(name: str, default: Path) -> Path:
    value = not_an_address(name, _env_path_value(name))
    return _not_dangling(_expand(value, name) if value else default, name)


def expand_user(value: str) -> Path:
    """Path ``value`` with a leading ``~`` expanded as the settings' folders are (:func:`_expand`): what the CLI's
    path options and the Python API's folder arguments take (``Path.expanduser`` raised a bare RuntimeError for
    ``~nouser/x``, "Could not determine home directory.", exit 1)."""
    return _expand(value, None)


def path_text(value, name: str) -> str:
    """A file or folder argument of the Python API as text, checked as the CLI checks its path options: a str or
    os.PathLike, not empty or blank, a leading ``~`` expanded (:func:`expand_user`) and any other text kept as given
    (a recorded setting — an export header's paths, a finetune state's data path, a sample's image_path — reads as
    before). An InputError naming ``name`` else.

    ``""`` is ``Path(".")``: ``write_report(r, os.environ.get("OUT", ""))``, ``train_base(cfg, "")``,
    ``export(ExportConfig(out=""))``, ``critique_group(run_dir="")`` wrote into the working folder (the last one then
    removed by ``discard_run`` when that folder was under the temp folder); ``" "`` made a folder named by a space;
    a quoted ``"~/x"`` reached from Python, where no shell expands it, a folder named ``~`` there; ``"~nouser/x"``
    was a bare RuntimeError. A ``Path(".")`` (``Path("")`` is the same object) is the current folder, as ``.`` is
    on the command line."""
    from hmrcritic.errors import InputError

    if isinstance(value, bytes) or not isinstance(value, str | os.PathLike):
        raise InputError(f"{name} must be a path (str or Path), got {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f'{name} is empty: give a path ("." for the current folder; a variable that is not set '
                         "reads as empty)")
    return str(_expand(text, name)) if text.startswith("~") else text


def path_arg(value, name: str) -> Path:
    """:func:`path_text` as a Path."""
    return Path(path_text(value, name))


def _expand(value: str, name: str | None) -> Path:
    """Path ``value`` of variable ``name`` with a leading ``~`` expanded, ``~`` being :func:`_user_home` (as the
    default home's): an InputError naming the variable (or, with ``name`` None, the path) for a ``~user`` that is no
    account here.

    ``Path.expanduser`` took an empty HOME as it is (``HOME= HMRCRITIC_HOME=~/hm`` made the home ``/hm``), and
    raised a bare RuntimeError for ``~nouser/x``: every command failed with "RuntimeError: Could not determine
    home directory.", not naming the variable, and doctor's body model and folders checks likewise."""
    if value == "~" or value.startswith("~/"):
        return Path(str(_user_home()) + value[1:])
    try:
        return Path(value).expanduser()
    except RuntimeError:
        from hmrcritic.errors import InputError

        user = value[1:].split("/", 1)[0]
        raise InputError(f"{f'{name}={value!r}' if name else value}: there is no user {user!r} on this machine "
                         f"for ~{user} to name the home folder of; give the folder's full path") from None


# ``host:port`` (a name, an IPv4 address or a bracketed IPv6 one; a port of digits): what follows the last "@" of a
# schemeless address. No "/" or "\\": ``./host:8000`` and ``data/run:1`` are folders.
_SCHEMELESS_ADDRESS = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.\-]*|\[[0-9A-Fa-f:.]+\]):\d{1,5}")


# "scheme:/" (a Path made "//" one "/") or "scheme:///": http(s)/chroma always, any other scheme when a user part
# follows (only an address has one), so the masker, which reads "scheme://" only, finds it
_COLLAPSED_SCHEME = re.compile(r"(?:(https?|chroma)|([A-Za-z][A-Za-z0-9+.\-]{0,31})(?=:/+[^/@]*@)):/+",
                               re.IGNORECASE)


def not_an_address(name: str, value: str, bare_too: bool = True) -> str:
    """``value`` of folder variable ``name``, unless it is a server address: an InputError (password masked).

    A server address where a folder goes (``HMRCRITIC_MEMORY=http://user:pw@host:8000``, meant for a shared
    memory) was a relative path: a Chroma database made in ``./http:/user:pw@host:8000/``, the password in its
    name (and doctor printed it).

    So is one without a scheme, as Chroma and Ray take it: ``[user[:password]@]host:port``, a numeric port and no
    "/" in the host part, not starting as a path does (``/``, ``~``, ``.``): ``HMRCRITIC_MEMORY=bob:pw@host:8000`` made
    a folder of that name, password and all. A folder really named like that (``run:1``) is ``./run:1``.
    ``bare_too=False`` refuses only an address with a scheme: for a path that went through a ``Path`` (which drops
    the ``./`` of ``./run:1``, the spelling asked for)."""
    # a URL whose "//" a Path made "/" (`--memory-dir http://u:pw@h:8000` reaches us as "http:/u:pw@h:8000"): read
    # as the URL it was, so it is refused as one and its password masked (the masker reads "scheme://" only)
    if (collapsed := _COLLAPSED_SCHEME.match(value)) is not None:
        value = f"{collapsed.group(1) or collapsed.group(2)}://{value[collapsed.end():]}"
    # with a scheme it is no folder, whatever is after its "@": "write it ./http://…" was offered for one
    schemeless = (bare_too and "://" not in value and not value.startswith(("/", "~", ".", "\\"))
                  and _SCHEMELESS_ADDRESS.fullmatch(value.rpartition("@")[2]) is not None)
    if "://" in value or schemeless:
        from hmrcritic.errors import InputError
        from hmrcritic.redact import redact_url

        hint = {"HMRCRITIC_MEMORY": "; a memory on a Chroma server is named by HMRCRITIC_CHROMA_URL",
                "MemoryStore: path": "; a memory on a Chroma server is named by --chroma-url (chroma_url= in Python)"
                }.get(name, "")
        folder = f" (a folder of that name: write it ./{redact_url(value)})" if schemeless else ""
        raise InputError(f"{name}={redact_url(value)!r} is a server address, not a folder{hint}{folder}")
    return value


def _not_dangling(path: Path, name: str) -> Path:
    """``path``, unless it or a folder above it is a symbolic link to nothing: an InputError naming the link.

    A home linked to a drive that is not mounted: the memory (which resolves links) made the missing target on
    the disk below and learnt into a folder the drive hides once mounted, while every other writer failed with
    "File exists: <link> (a file is where a folder is needed)", and doctor called the folders fine."""
    from hmrcritic.errors import InputError

    for p in (path, *path.parents):
        try:
            dangling = p.is_symlink() and not p.exists()
        except OSError as exc:  # a name longer than the file system takes: a bare "OSError: [Errno 36] File name
            # too long" out of every command, the variable unnamed
            shown = str(path) if len(str(path)) <= 80 else str(path)[:80] + "…"
            raise InputError(f"{name}: {shown} is not a usable folder ({exc.strerror or exc}); set it (or "
                             "HMRCRITIC_HOME) to another path") from None
        if dangling:
            raise InputError(f"{p} is a symbolic link to {os.readlink(p)}, which does not exist (a drive not mounted?)"
                             f"; create it, or set {name} or HMRCRITIC_HOME to another folder")
    return path


def home_dir() -> Path:
    """Root of everything the toolkit writes (cache, data, memory) unless overridden per folder."""
    from hmrcritic.errors import InputError

    home = not_an_address("HMRCRITIC_HOME", _env_path_value("HMRCRITIC_HOME"))
    if home:
        return _expand(home, "HMRCRITIC_HOME")
    xdg = _env_path_value("XDG_DATA_HOME")
    # a relative XDG_DATA_HOME is invalid (XDG spec: ignore it): it put the home under whatever folder a command
    # ran from, so the memory and data learnt in one folder were missing in the next (so is a ~user of no account)
    try:
        xdg_path = _expand(xdg, "XDG_DATA_HOME") if xdg else None
    except InputError:
        xdg_path = None
    xdg_ok = xdg_path is not None and xdg_path.is_absolute()
    return (xdg_path if xdg_ok else _user_home() / ".local" / "share") / "hmrcritic"


def _user_home() -> Path:
    """``$HOME`` when it is an absolute path, else the account's home from the password database.

    ``Path.home()`` takes HOME as it is: an empty one (``HOME= cmd``, some service managers) made the home
    folder ``/.local/share/hmrcritic`` (root: written there; anyone else: "permission denied" on ``/``) and a
    relative one put it under whatever folder the command ran from, as a relative XDG_DATA_HOME did."""
    home = os.environ.get("HOME", "")
    if home and Path(home).is_absolute():
        return Path(home)
    try:
        import pwd

        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError, OSError):  # no such account (a container's arbitrary uid): as before
        return Path.home()


def cache_dir() -> Path:
    """Generated assets (the mannequin body model, pose priors). Safe to delete: regenerated on demand."""
    return _env_path("HMRCRITIC_CACHE", home_dir() / "cache")


def data_dir() -> Path:
    """Synthetic splits (sharded .npz + manifest)."""
    return _env_path("HMRCRITIC_DATA", home_dir() / "data")


def memory_dir() -> Path:
    """The Chroma dual memory (rules + prototypes)."""
    return _env_path("HMRCRITIC_MEMORY", home_dir() / "memory")


def runs_dir() -> Path:
    """Agent runs: the SQLite checkpointer and per-run artefacts (renders, evidence, traces)."""
    return _env_path("HMRCRITIC_RUNS", home_dir() / "runs")


API_KEY_VARS = ("HMRCRITIC_API_KEY", "OPENAI_API_KEY")  # the first one set wins


def api_key() -> str | None:
    """The judge endpoint key, from the environment only, as it can go into an ``Authorization`` header (None
    when unset or blank), else an :class:`InputError` that says why not. Never log or serialise it.

    Every reader gets the same key and the same check: a key read from a file (``$(cat key.txt)`` of a Windows
    file keeps its ``\\r``) or pasted with a space or a typographic character cannot be sent: the HTTP client
    refused the header inside the request, so every group was retried and then reported as "cannot connect to
    <endpoint>" (or a "malformed answer"), and the client's debug log quoted the header, key and all.
    Surrounding whitespace is never part of a key; any other such character is named by position, never
    shown."""
    # a blank variable is an unset one: HMRCRITIC_API_KEY="" or a stray "\r\n" hid a valid OPENAI_API_KEY
    name = next((v for v in API_KEY_VARS if (os.environ.get(v) or "").strip()), None)
    if name is None:
        return None
    key = os.environ[name].strip()
    bad = next((i for i, c in enumerate(key) if not (" " < c < "\x7f")), None)
    if bad is not None:
        from hmrcritic.errors import InputError

        raise InputError(f"the API key in {name} has a space, control or non-ASCII character at position "
                         f"{bad + 1} of {len(key)}; it cannot be sent in an HTTP header (a key pasted from a "
                         "document or read from a file with Windows line endings?)")
    return key or None


def check_device(device: str | None = None) -> str:
    """``device`` (None or "": :func:`default_device`, i.e. ``HMRCRITIC_DEVICE`` else cpu) if this torch can run
    on it, else an :class:`InputError` naming the way out."""
    import torch

    from hmrcritic.errors import InputError

    # named as the user gave it: "use --device cpu" sent someone who never typed --device (their device came
    # from HMRCRITIC_DEVICE in a profile or a job's environment) after the wrong setting
    given = "" if device else " (from HMRCRITIC_DEVICE)"
    way_out = "use --device cpu" if device else "unset HMRCRITIC_DEVICE or set it to cpu"
    device = device or default_device()

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"device {device!r}{given} is not a torch device; use cpu or cuda[:N]") from None
    if kind not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}{given}: hmrcritic runs on cpu or cuda[:N]")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}{given}: this torch has no usable CUDA (CPU build, or no GPU visible); "
                         f"{way_out}")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise InputError(f"device {device!r}{given}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1}); "
                         + ("use --device cuda:0" if given == "" else "set HMRCRITIC_DEVICE to cuda:0 or cpu"))
    return device


def check_base_url(url: str | None) -> str | None:
    """The judge's base URL if usable, else an :class:`InputError` that says why (the URL shown redacted).

    Credentials do not belong in it: ``user:password@`` makes the HTTP client send Basic auth *instead of*
    the API key, and a query string ends up in the middle of the request path (``/v1?x=…chat/completions``);
    both also spread the secret into every message that names the endpoint."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    from hmrcritic.errors import InputError
    from hmrcritic.redact import redact_url

    shown = redact_url(url)
    # urlsplit drops a \r, \n or tab and leading spaces: the URL passed, and the HTTP client then refused it with
    # a traceback at the first critique (or sent every request to "%20http://…")
    bad = next((i for i, c in enumerate(url) if c.isspace() or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InputError(f"judge base URL {shown!r} has a space or control character at position {bad + 1} "
                         "(read from a file with Windows line endings?)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for its ValueError
    except ValueError:
        # urlsplit's and .port's ValueError (an unclosed "[", a bracketed host that is no IP address, a port of
        # letters or > 65535) left every command as "error: ValueError: Invalid IPv6 URL", exit 1 (an unexpected
        # error, not bad input), and doctor's judge check died on it; a port of letters passed here and failed only
        # at the first critique, after the data and memory were made. Its text is not quoted: "Port could not be
        # cast to integer value as 'pa'" is a piece of the password of ``http://user:pa/ss@host``
        raise InputError(f"judge base URL {shown!r} is not a valid URL (an unclosed '[', a bracketed host that is "
                         "no IP address, or a port that is not a number in 0..65535); expected "
                         "http(s)://host[:port]/path, e.g. http://localhost:8000/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"judge base URL {shown!r} is not of the form http(s)://host[:port]/path "
                         "(e.g. http://localhost:8000/v1 for vLLM)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InputError(f"judge base URL {shown!r} must not carry credentials, a query string or a fragment; "
                         "put the key in HMRCRITIC_API_KEY (or OPENAI_API_KEY)")
    return url


MAX_TIMEOUT_S = 7 * 24 * 3600.0  # the longest judge timeout (HMRCRITIC_VLM_TIMEOUT): a week

# the first one set wins; none set: OpenAI's API, given to the client by name (vlm.OPENAI_API). OPENAI_API_BASE is
# langchain's variable: ChatOpenAI followed it (and LANGSMITH_GATEWAY) on its own when given no base URL, so the
# judge (and its key) went to an address this module called "the OpenAI API" in every identity, record and message
BASE_URL_VARS = ("HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE")


def base_url_from_env() -> tuple[str | None, str | None]:
    """The judge endpoint's base URL from the environment and the variable it came from, ``(None, None)`` when
    unset: the default of :class:`JudgeSettings` and, in the VLM judge's advice, the setting to correct."""
    for name in BASE_URL_VARS:
        # blank is unset and the spaces around it are no part of it, as for the key: ``HMRCRITIC_BASE_URL=" "`` hid
        # OPENAI_BASE_URL, and one from a Windows env file (``…/v1\r``) passed the URL check and then failed every
        # judge with an httpx traceback ("Invalid non-printable ASCII character in URL")
        value = (os.environ.get(name) or "").strip()
        if value:
            return value, name
    return None, None


@dataclass
class JudgeSettings:
    """Where the VLM judge lives. Works with OpenAI, vLLM (:8000), Ollama (:11434), LM Studio (:1234)."""

    base_url: str | None = field(default_factory=lambda: base_url_from_env()[0])
    # empty counts as unset, as for every other setting: ``HMRCRITIC_VLM_MODEL=`` sent the model name "" to the
    # endpoint, and doctor and the memory and dataset keys took "" for a critic of its own
    model: str = field(default_factory=lambda: (os.environ.get("HMRCRITIC_VLM_MODEL") or "").strip() or "gpt-4o-mini")
    # at most a week: beyond ~9.2e9 s (threading.TIMEOUT_MAX) the deadline's wait and the socket's timeout
    # overflowed, so ``=1e10`` ("never time out") passed here and doctor, and every request then failed with
    # "OverflowError: timestamp out of range for platform time_t"
    timeout_s: float = field(default_factory=lambda: env_number("HMRCRITIC_VLM_TIMEOUT", 60.0, float, 0, above=True,
                                                                maximum=MAX_TIMEOUT_S))
    max_retries: int = field(default_factory=lambda: env_number("HMRCRITIC_VLM_RETRIES", 4, int, 0))
    max_concurrency: int = field(default_factory=lambda: env_number("HMRCRITIC_VLM_CONCURRENCY", 4, int, 1))
    # output-token cap per answer; None = the endpoint's own default (a 64-hypothesis critique is ~4k tokens,
    # more than some local servers give by default)
    max_tokens: int | None = field(default_factory=lambda: env_number("HMRCRITIC_VLM_MAX_TOKENS", None, int, 1))
    # the grids as rendered are 256 px a tile, 4 a row (N = 64: 16 rows, twice as wide with side views): a small
    # local VLM sees them at its own input size anyway, and a hosted one bills by image tiles. None = as rendered.
    image_max_side: int | None = field(
        default_factory=lambda: env_number("HMRCRITIC_VLM_IMAGE_MAX_SIDE", None, int, 64))
    # OpenAI's image ``detail`` (low | high | auto); None = not sent (the endpoint's default; other servers ignore it)
    image_detail: str | None = field(
        default_factory=lambda: (os.environ.get("HMRCRITIC_VLM_IMAGE_DETAIL") or "").strip().lower() or None)

    def __post_init__(self) -> None:  # values given in code are held to what the variables are
        import math

        from hmrcritic.errors import InputError

        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise InputError(f"judge timeout must be a number of seconds > 0 and ≤ {MAX_TIMEOUT_S:g} (a week), got "
                             f"{self.timeout_s}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or int(self.max_tokens) != self.max_tokens
                                            or self.max_tokens < 1):
            raise InputError(f"judge max_tokens must be an integer ≥ 1 (or None for the endpoint's default), got "
                             f"{self.max_tokens!r}")
        if self.image_max_side is not None and (isinstance(self.image_max_side, bool)
                                                or int(self.image_max_side) != self.image_max_side
                                                or self.image_max_side < 64):
            raise InputError(f"judge image_max_side (HMRCRITIC_VLM_IMAGE_MAX_SIDE) must be an integer ≥ 64 px (or "
                             f"None to send the grids as rendered), got {self.image_max_side!r}")
        if self.image_detail not in (None, "low", "high", "auto"):
            raise InputError(f"judge image_detail (HMRCRITIC_VLM_IMAGE_DETAIL) must be low, high or auto, got "
                             f"{self.image_detail!r}")
        if self.max_retries < 0 or self.max_concurrency < 1:
            raise InputError(f"judge retries must be ≥ 0 and concurrency ≥ 1, got {self.max_retries}, "
                             f"{self.max_concurrency}")

    def describe(self) -> str:
        """``model @ endpoint`` (no credentials): which VLM answers, for results, reports and dataset headers."""
        from hmrcritic.redact import redact_url

        return f"{self.model} @ {redact_url(self.base_url) or 'the OpenAI API'}"

    def image_identity(self) -> str:
        """How the images are sent, when not as rendered: what the VLM sees, so a finished critique is reused
        only under the same (empty for the defaults: existing critiques keep their identity)."""
        parts = [f"images<={self.image_max_side}px" if self.image_max_side else "",
                 f"detail={self.image_detail}" if self.image_detail else ""]
        return ",".join(p for p in parts if p)

    def public(self) -> dict:
        """Settings safe to print: the key is reported only as present, absent or unusable (why, never the key),
        the base URL without credentials (``user:password@`` or a secret query value: it came out verbatim)."""
        from hmrcritic.errors import InputError
        from hmrcritic.redact import redact_url

        out = asdict(self)
        out["base_url"] = redact_url(self.base_url)
        try:
            out["api_key"] = "set" if api_key() else "not set"
        except InputError as exc:  # said here (by position, never shown), not raised: `doctor` reports it
            out["api_key"] = f"set but unusable: {exc}"
        return out


def body_model_path() -> Path | None:
    """A user-supplied SMPL file (``HMRCRITIC_BODY_MODEL``); None means the built-in mannequin."""
    value = _env_path_value("HMRCRITIC_BODY_MODEL")
    return _expand(value, "HMRCRITIC_BODY_MODEL") if value else None


def default_device() -> str:
    """``--device`` when not given (train-base, sample, evaluate): ``HMRCRITIC_DEVICE``, unset or blank → cpu.

    Without the spaces or line ending around it, as every other variable here: ``cuda\r`` from a Windows env file
    was "not a torch device", and a blank one refused rather than unset."""
    return (os.environ.get("HMRCRITIC_DEVICE") or "").strip() or "cpu"
