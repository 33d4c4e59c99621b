"""CLI command groups. Each module defines ``register(app: typer.Typer)``; ``hmrcritic.cli`` imports them."""

from __future__ import annotations


def expand_user_paths(app) -> None:
    """Make every command of ``app`` (its groups' too, and a group's own callback) take ``~`` in a path as the
    home folder.

    A shell leaves ``~`` alone when quoted or after ``=`` (``--out=~/runs/x``): ``--memory-dir``, the body model and
    every HMRCRITIC_* folder expanded it, but ``--out``, export files and the other paths made a folder named ``~``
    in the current one (``critique --memory-dir ~/m --out=~/o`` wrote to ``/home/me/m`` and ``./~/o``), one
    ``rm -rf ~`` away from losing the real home when cleaning up. Wraps the registered callbacks, so what typer reads
    of them (signature, help) is unchanged and the functions stay callable as they were. Called once by
    ``hmrcritic.cli`` on the whole command tree, so a command added later is covered too."""
    import functools
    from pathlib import PurePath

    def expanding(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            return fn(*args, **{k: v.expanduser() if isinstance(v, PurePath) else v for k, v in kwargs.items()})

        call.expands_user_paths = True
        return call

    infos = list(app.registered_commands)
    if app.registered_callback is not None:  # a group run as a command (``export --out …``)
        infos.append(app.registered_callback)
    for info in infos:
        if info.callback is not None and not getattr(info.callback, "expands_user_paths", False):
            info.callback = expanding(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            expand_user_paths(group.typer_instance)


def is_tty(stream) -> bool:
    """Whether ``stream`` is a terminal. ``sys.stdout`` is None when the command runs with stdout closed
    (``hmrcritic critique … >&-``, some service managers): ``sys.stdout.isatty()`` then failed with an
    AttributeError after the work was done, and the command reported an error for a run that had finished."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # None, a closed or a replaced stream
        return False


def scene_from_spec(spec: str):
    """The synthetic scene ``SPLIT:INDEX`` names (``--scene test:3``), range-checked against its split; one
    parser for ``sample`` and ``critique``, so both take and refuse the same specs with the same words."""
    from hmrcritic.errors import InputError

    split, _, idx = spec.rpartition(":")
    if not split or not idx.strip().lstrip("-").isdigit():
        raise InputError(f"--scene must look like SPLIT:INDEX (e.g. test:3), got {spec!r}")
    from hmrcritic.hmr.data import load_split

    scenes = load_split(split)
    i = int(idx)
    if not 0 <= i < len(scenes):
        raise InputError(f"--scene index {i} out of range for split {split!r} ({len(scenes)} scenes)")
    return scenes[i]  # a damaged shard (short, missing an array) is refused by SceneSet, naming the split
