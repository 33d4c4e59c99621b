"""CLI command groups. Each module defines ``register(app: typer.Typer)``; ``hmrcritic.cli`` imports them."""

from __future__ import annotations

import json

import typer

from hmrcritic.io import finite_json  # noqa: F401  (re-exported: the commands' name for it)


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

    def expanded(v: PurePath):
        from hmrcritic.config import expand_user

        # as the HMRCRITIC_* folders are: `~user` of no account is one line, not Python's bare RuntimeError
        return type(v)(expand_user(str(v))) if str(v).startswith("~") else v

    def expanding(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            return fn(*args, **{k: expanded(v) if isinstance(v, PurePath) else v for k, v in kwargs.items()})

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


def progress_at_tenths(line: str):
    """A ``(done, total)`` progress callback for a log or CI (no terminal): ``line`` (formatted with ``done`` and
    ``total``) on stderr at the first call, each tenth of the way and the end — ``\r`` updates piled up there as
    one line of carriage returns, and a bar drawn nowhere showed no sign of life until its end. The rule is
    :func:`hmrcritic.agent.learning_curve.at_a_tenth`, the one the agent's calibration lines follow; ``done`` may
    jump (a batch at a time)."""
    import sys

    from hmrcritic.agent.learning_curve import tenths_progress

    return tenths_progress(lambda done, total: print(line.format(done=done, total=total), file=sys.stderr,
                                                     flush=True))


def is_tty(stream) -> bool:
    """Whether ``stream`` is a terminal. ``sys.stdout`` is None when the command runs with stdout closed
    (``hmrcritic critique … >&-``, some service managers): ``sys.stdout.isatty()`` then failed with an
    AttributeError after the work was done, and the command reported an error for a run that had finished."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # None, a closed or a replaced stream
        return False


def confirm_or_stop(question: str, unchanged: str) -> None:
    """Ask ``question`` on stderr (stdout is for the result, ``--json``); an answer "n" ends the command with exit
    code 1 and ``unchanged`` (what was left alone, e.g. "nothing deleted") on stderr.

    ``typer.confirm(..., abort=True)`` raised the same Abort for a "n" as for Ctrl-C, and the command exited 130,
    the code of an interrupt: a script or a wrapper reading the code took a user's "no" for a killed run. A "no"
    is a refusal (1, as ``apt`` and ``rm -i`` do); Ctrl-C and the end of stdin still reach ``cli.main`` as Abort."""
    import sys

    import typer

    if sys.stdin is None:
        # stdin closed (``<&-``, a service manager): no answer can come, as at the end of an empty stdin; asking
        # failed as "error: RuntimeError: input(): lost sys.stdin (run with --debug …)", an unexpected error that
        # did not say that nothing was changed or that --yes exists. Abort: cli.main says both, exit 1
        print(f"{question} [y/N]: ", end="", file=sys.stderr, flush=True)
        raise typer.Abort()
    import io
    from contextlib import redirect_stderr, redirect_stdout

    # typer's confirm writes the prompt's last character (its space) with input(), i.e. to stdout: every piped
    # answer put " " before the command's result (`memory reset > reset.log`, `runs prune --json`). With stderr
    # closed (`2>&-`) input() failed ("lost sys.stderr"): the prompt goes nowhere then, the answer is still read
    err = sys.stderr if sys.stderr is not None else io.StringIO()
    with redirect_stdout(err), redirect_stderr(err):
        answer = typer.confirm(question, err=True)
    if not is_tty(sys.stdin):  # at a terminal the answer's Enter is echoed and ends the line
        # an answer piped in is not echoed, so nothing ended the prompt's line: the next message ran onto it
        # ("[y/N]: not confirmed: …", "[y/N]: error: …"). (The end of stdin raises Abort above: cli.main starts
        # its own line for that.)
        print(file=err)
    if not answer:
        print(f"not confirmed: {unchanged}", file=err)
        raise SystemExit(1)  # (typer.Exit's code is lost under standalone_mode=False)


def made_folder(path):
    """A context that makes folder ``path`` (and the folders above it that are missing) and, when the block fails
    with them still empty, removes them again.

    ``learning-curve --out lc`` made ``lc`` before its memory and settings were checked, and ``explore-eval --out
    new/x.json`` made ``new``: a refused command (``--memory-dir`` naming a file, an unknown split) left an empty
    folder behind, one a re-run with the mistake fixed then took for an earlier run's."""
    import contextlib
    from pathlib import Path

    @contextlib.contextmanager
    def made():
        folder = Path(path).absolute()
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)  # a file in the way or no permission: the OSError line now
        try:
            yield folder
        except BaseException:
            for p in missing:  # deepest first; one that got a file stays, and so do the folders above it
                try:
                    p.rmdir()
                except OSError:
                    break
            raise

    return made()


def check_output_file(path, what: str) -> None:
    """Refuse, before the command's work, an output file name that names a device, a pipe, a terminal, a socket or
    a process's file descriptor (``memory export /dev/stdout | jq`` replaced the link with a regular file):
    :func:`hmrcritic.io.check_output_target`, which every atomic write applies too."""
    from hmrcritic.io import check_output_target

    check_output_target(path, what)


def scene_from_spec(spec: str):
    """The synthetic scene ``SPLIT:INDEX`` names (``--scene test:3``), range-checked against its split; one
    parser for ``sample`` and ``critique``, so both take and refuse the same specs with the same words."""
    from hmrcritic.errors import InputError

    split, _, idx = spec.rpartition(":")
    digits = idx.strip().lstrip("-")
    if not split or not (digits.isascii() and digits.isdigit()):  # "²" is a digit to isdigit(), not to int()
        raise InputError(f"--scene must look like SPLIT:INDEX (e.g. test:3), got {spec!r}")
    from hmrcritic.hmr.data import load_split

    scenes = load_split(split)
    i = int(idx)
    if not 0 <= i < len(scenes):
        raise InputError(f"--scene index {i} out of range for split {split!r} ({len(scenes)} scenes: "
                         f"0..{len(scenes) - 1})")
    return scenes[i]  # a damaged shard (short, missing an array) is refused by SceneSet, naming the split


def load_input_sample(scene, image, keypoints, focal=None, principal_point=None, intrinsics=None, person=None,
                      keypoint_layout=None):
    """The one input of ``sample`` and ``critique``: a synthetic scene (SPLIT:INDEX) or a user image + keypoint JSON
    with its camera (``--focal``/``--principal-point`` or ``--intrinsics``) and ``--person``/``--keypoint-layout``.
    One function, so both commands take and refuse the same flags with the same words; a flag that cannot apply to
    a scene is refused rather than ignored (a scene carries its own camera and one COCO-17 person)."""
    from hmrcritic.errors import InputError

    if scene:
        if image or keypoints:
            raise InputError("give either --scene or --image/--keypoints, not both")
        camera = "is for a user image (--image/--keypoints); a --scene has its own camera"
        for flag, value, why in (("--focal", focal, camera), ("--principal-point", principal_point, camera),
                                 ("--intrinsics", intrinsics, camera),
                                 ("--person", person, "applies to --keypoints files of several people; a --scene "
                                                      "has one"),
                                 ("--keypoint-layout", keypoint_layout, "applies to --keypoints files; a --scene "
                                                                        "has COCO-17 keypoints")):
            if value is not None:
                raise InputError(f"{flag} {why}")
        return scene_from_spec(scene)
    if not image or not keypoints:
        raise InputError("give --image and --keypoints (or --scene SPLIT:INDEX)")
    from hmrcritic.hmr.data import sample_from_user
    from hmrcritic.hmr.intrinsics import parse_principal_point

    if principal_point is not None:
        principal_point = parse_principal_point(principal_point)
    return sample_from_user(image, keypoints, focal=focal, person=person, keypoint_layout=keypoint_layout or "coco17",
                            principal_point=principal_point, intrinsics=intrinsics)


def json_text(obj) -> str:
    """The one JSON document a ``--json`` prints: strict (no NaN), indented."""
    return json.dumps(finite_json(obj), indent=2, default=str, allow_nan=False)


def say_failed_groups(res: dict, command: str) -> None:
    """A variant whose critiques failed for some groups (a VLM endpoint down, rate limits) is averaged over the
    others; one that scored none has no numbers at all. explore-eval said neither and exited 0, so a script read
    a table of nulls (or a mean over 1 of 20 groups) as a result. Each such variant gets a warning on stderr, and
    when no variant scored a single group the exit code is 1 (as ``export`` with no group written). The first
    failure's reason (``first_failure``) is named where there was one."""
    import sys

    from hmrcritic.redact import printable

    rows = res.get("rows") or []
    total = res.get("num_groups")
    for row in rows:
        scored = row.get("groups_scored")
        if isinstance(scored, int) and isinstance(total, int) and scored < total:
            print(f"warning: {command}: variant {row.get('variant')} scored {scored} of {total} groups (the "
                  "critiques of the others failed); "
                  + ("its numbers are over the groups it scored" if scored else "it has no numbers")
                  + (f"; first: {printable(row['first_failure'])}" if row.get("first_failure") else ""),
                  file=sys.stderr)
    if rows and not any(row.get("groups_scored") for row in rows):
        stop_nothing_scored(rows, f"{command}: no variant scored any group")


def stop_nothing_scored(rows: list[dict], what: str) -> None:
    """Exit 1 with ``error: <what>: every critique failed (first: …)``: an evaluation whose every row scored no
    group has no numbers at all (explore-eval, evaluate-critic, learning-curve)."""
    import sys

    from hmrcritic.redact import printable

    first = next((row["first_failure"] for row in rows if row.get("first_failure")), None)
    print(f"error: {what}: every critique failed ("
          + (f"first: {printable(first)}" if first else "with --judge vlm: check the endpoint, e.g. with "
             "`hmrcritic critique --scene test:0 --judge vlm`") + ")", file=sys.stderr)
    raise SystemExit(1)  # (typer.Exit's code is lost under standalone_mode=False)


# ``--base-url`` / ``--vlm-model``: the VLM judge's endpoint and model on the command line, beside the variables
BASE_URL_HELP = ("The VLM judge's OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (with --judge vlm; "
                 "overrides HMRCRITIC_BASE_URL, OPENAI_BASE_URL and OPENAI_API_BASE; the key stays in "
                 "HMRCRITIC_API_KEY or OPENAI_API_KEY).")
VLM_MODEL_HELP = ("The VLM judge's model name (with --judge vlm; overrides HMRCRITIC_VLM_MODEL, default "
                  "gpt-4o-mini).")
# ``--judge``'s words, one text for every command that takes it (explore's said "builtin (offline) | vlm",
# evaluate-critic's "builtin or vlm", export's and critique's other words for the same choice)
JUDGE_HELP = "builtin (offline) or vlm (an OpenAI-compatible endpoint: --base-url, --vlm-model)."
# one text for ``--chroma-url`` too: export's named no default, where it falls back to HMRCRITIC_CHROMA_URL as
# every command does (MemoryStore reads it)
CHROMA_URL_HELP = "Chroma server, http://host:port (default: HMRCRITIC_CHROMA_URL, else embedded on disk)."
# the two options, one definition for every command that takes --judge (typer reads a shared default as is)
BASE_URL_OPTION = typer.Option(None, "--base-url", help=BASE_URL_HELP)
VLM_MODEL_OPTION = typer.Option(None, "--vlm-model", help=VLM_MODEL_HELP)


def judge_endpoint(judge, base_url: str | None, vlm_model: str | None):
    """A context in which the VLM judge's ``--base-url`` and ``--vlm-model`` are in force: set as
    ``HMRCRITIC_BASE_URL`` / ``HMRCRITIC_VLM_MODEL`` (the first of the variables each is read from, so a flag beats
    every variable), and put back as they were when the command ends, however it ends (a test or a notebook calling
    ``cli.main`` twice sees no flag of the first call).

    The environment is the one channel that reaches every reader: each ``JudgeSettings()`` of this process (the
    judge, the thread and evaluation keys, the export's header) and the export's spawned worker processes (and a
    local Ray cluster), which build their judges from the environment they inherit. A flag given with another judge
    than ``vlm`` is unused: a note on stderr, nothing set (``judge`` None: ``HMRCRITIC_JUDGE``, else builtin, as
    the agent settings read it). A URL is checked now, before any work, in the words of
    :func:`hmrcritic.config.check_base_url` (credentials masked)."""
    import contextlib
    import os
    import sys

    @contextlib.contextmanager
    def in_force():
        if base_url is None and vlm_model is None:
            yield
            return
        from hmrcritic.agent.state import canonical_judge

        name = judge if judge is not None else (os.environ.get("HMRCRITIC_JUDGE") or "").strip() or "builtin"
        key = canonical_judge(name) if isinstance(name, str) else ""
        if key != "vlm":
            if key == "builtin":  # (an unknown judge is refused by the command, in make_judge's words)
                given = " and ".join(f for f, v in (("--base-url", base_url), ("--vlm-model", vlm_model))
                                     if v is not None)
                print(f"note: {given} unused: the builtin judge sends no requests (only --judge vlm does)",
                      file=sys.stderr)
            yield
            return
        from hmrcritic.config import check_base_url
        from hmrcritic.errors import InputError
        from hmrcritic.redact import register_url

        values: dict[str, str] = {}
        if base_url is not None:
            register_url(base_url)  # its credentials masked in every message from now on (it is refused below)
            url = base_url.strip()
            if not url:
                raise InputError("--base-url is empty; give the endpoint, e.g. http://localhost:8000/v1")
            try:
                check_base_url(url)
            except InputError as exc:
                raise InputError(f"--base-url: {exc}") from None
            values["HMRCRITIC_BASE_URL"] = url
        if vlm_model is not None:
            model = vlm_model.strip()
            if not model:
                raise InputError("--vlm-model is empty; give the model name the endpoint serves")
            values["HMRCRITIC_VLM_MODEL"] = model
        before = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    return in_force()


def with_judge_endpoint(fn):
    """Decorate a command that takes ``judge``, ``base_url`` and ``vlm_model``: its body runs in
    :func:`judge_endpoint`. Typer reads the wrapped function's signature (options and help are unchanged)."""
    import functools

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with judge_endpoint(kwargs.get("judge"), kwargs.get("base_url"), kwargs.get("vlm_model")):
            return fn(*args, **kwargs)

    return call


# --keypoint-layout of `sample` and `critique`: a 17-point file's order cannot be told from the file
KEYPOINT_LAYOUT_HELP = ("Order of a 17-point --keypoints file: coco17 (default) or h36m17 (Human3.6M-17: VideoPose3D, "
                        "MotionBERT; mapped to COCO-17, eyes and ears hidden).")
FOCAL_HELP = "Focal length in px of a user image (default: max(W, H))."
PRINCIPAL_POINT_HELP = ("CX,CY in px of a user image (default: its centre); for a crop, the photo's optical centre "
                        "minus the crop's corner, with --focal the photo's.")
INTRINSICS_HELP = ("Camera calibration file (JSON, or YAML for .yaml/.yml) for a user image instead of "
                   "--focal/--principal-point: a 3x3 K, the 4 numbers fx fy cx cy, OpenCV's camera_matrix, "
                   "fx/fy/cx/cy or focal_length + principal_point fields, nerfstudio, Open3D, COLMAP or ROS "
                   "CameraInfo / camera_calibration cameras (README; pixels of the image as used).")
