"""User-facing errors.

Anything a user can cause (a missing file, a malformed keypoint JSON, a wrong body model, an endpoint that
keeps failing) raises :class:`HMRCriticError` with one line that says what is wrong and where. The CLI
prints that line and exits non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import Any


class HMRCriticError(Exception):
    """An error whose message is meant for the user (one line: what is wrong and where)."""

    exit_code = 2


class InputError(HMRCriticError):
    """Bad user input: a file that is missing, unreadable, malformed or inconsistent."""


class AssetError(HMRCriticError):
    """A missing or malformed asset (body model, checkpoint, dataset)."""


class JudgeError(HMRCriticError):
    """A judge failed for a group after its retries (timeout, garbage, rate limits)."""


class InvalidCritiqueError(JudgeError):
    """The judge's critique was still invalid (a hypothesis missing or repeated) when the revise rounds ran out.
    Its thread is discarded: resuming it would only replay the same stored critique."""


def check_number(name: str, value: Any, integer: bool = False) -> None:
    """Refuse ``value`` unless it is a number (``integer``: an integer) with one :class:`InputError` line naming
    ``name``: a string like "8" or a bool is refused here rather than as a TypeError deep inside, while numpy and
    torch scalars pass like any other number. Nothing is converted: valid input behaves exactly as before."""
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        operator.index(value) if integer else float(value)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{name} must be {'an integer' if integer else 'a number'}, got "
                         f"{type(value).__name__}") from None


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside the hmrcritic package: the caller's line (a notebook
    cell, a script), however deep in the package the warning was raised. Each call site counted a fixed
    ``stacklevel``, which pointed at a library line whenever the path to it was deeper (``load_intrinsics`` through
    ``sample_to_dir``, ``read_keypoints`` through ``critique_image``), and Python's "default" filter then showed one
    warning per library line instead of one per line of the caller's code. (Python 3.12's ``skip_file_prefixes``
    does this; the project runs on 3.11.)"""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 1, sys._getframe(1)  # noqa: SLF001 - the only way to walk the stack without inspect's cost
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level + 1)


def unknown_keyword_hints(unknown: Iterable[str], known: Iterable[str]) -> str:
    """``'fersh' (did you mean 'fresh'?), 'x'``: the unknown keywords, each with the closest known one if any."""
    import difflib

    known = list(known)
    return ", ".join(f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
        str(k), known, n=1)) else "") for k in unknown)


def keywords_checked(fn):
    """``fn`` with its arguments checked against its signature first: a misspelt keyword (``fersh=True``), a
    missing or an extra argument is one :class:`InputError` line naming the function, the closest real keyword and
    the ones it takes. Python 3.11's own TypeError ("got an unexpected keyword argument 'fersh'") came out as a
    traceback and named no keyword that exists. The wrapper keeps the name, docstring and signature
    (``inspect.signature`` follows ``__wrapped__``: help(), tab completion, :func:`critique_groups`' check)."""
    import inspect

    sig = inspect.signature(fn)
    params = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    # a function with **kwargs takes any keyword: a bind that fails there failed for another reason (a missing or
    # an extra positional argument), and naming its forwarded keywords "unknown" hid that reason
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    # a class's __init__ (a config dataclass) is named as the class, and its self is not listed
    name = fn.__qualname__.removesuffix(".__init__")
    shown = [p for p in params if p != "self"]

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            unknown = [] if any_keyword else [k for k in kwargs if k not in params]
            why = (f"unknown argument(s) {unknown_keyword_hints(unknown, params)}" if unknown
                   else str(exc))
            raise InputError(f"{name}: {why} ({name} takes {', '.join(shown)})") from None
        return fn(*args, **kwargs)

    return checked


def keywords_checked_init(cls):
    """Class decorator (above ``@dataclass``): ``cls``'s constructor checked as :func:`keywords_checked` checks a
    function — ``ExportConfig(num_generation=8)`` was Python's bare TypeError naming no field that exists."""
    cls.__init__ = keywords_checked(cls.__init__)
    return cls
