"""Test session setup: point the whole toolkit at a temporary home so tests never touch the user's
folders, and keep torch to the two cores CI has."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest


def _is_developer_setting(name: str) -> bool:
    """A variable of the developer's own set-up that the toolkit (or LangChain under it) reads. Left in place,
    `make test` on a developer's machine followed it: ``HMRCRITIC_CHROMA_URL`` / ``HMRCRITIC_MEMORY`` pointed the
    tests' memories — which they reset and fill — at the developer's shared Chroma server, ``HMRCRITIC_JUDGE=vlm``
    or ``OPENAI_BASE_URL`` sent test groups to their endpoint, ``LANGSMITH_TRACING`` uploaded every test's trace,
    ``HMRCRITIC_DEBUG`` turned the one-line errors the tests read into tracebacks. Tests that need one set it
    themselves (monkeypatch). ``HMRCRITIC_TEST_*`` are the tests' own messages to the processes they start."""
    if name.startswith("HMRCRITIC_TEST_"):
        return False
    prefixes = ("HMRCRITIC_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_")
    return name.startswith(prefixes) or name == "CHROMA_CLIENT_AUTH_CREDENTIALS"


for _name in [n for n in os.environ if _is_developer_setting(n)]:
    del os.environ[_name]
_HOME = tempfile.mkdtemp(prefix="hmrcritic-test-home-")
os.environ["HMRCRITIC_HOME"] = _HOME
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def clean_secrets(monkeypatch):
    """No key or address variable set and nothing registered: only the form of a secret can mask it (the scrubber's
    tests; returns :mod:`hmrcritic.redact`)."""
    from hmrcritic import redact

    for v in redact.SECRET_ENV_VARS + redact.URL_ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(redact, "_extra", set())
    return redact


@pytest.fixture(scope="session")
def body():
    """The built-in body model (the mannequin)."""
    from hmrcritic.hmr.body import load_body_model

    return load_body_model()


@pytest.fixture(scope="session")
def prior():
    """A small pose prior (2 components on 300 poses) for the evidence tests: fitted in well under a second."""
    from hmrcritic.agent.prior import fit_gmm, pose_features
    from hmrcritic.hmr.poses import sample_poses

    return fit_gmm(pose_features(sample_poses(300, seed=7)["body_pose"]), components=2, iters=5)


@pytest.fixture(scope="module")
def small_prior():
    """The process-wide pose prior set to one fitted on a few hundred poses, so agent tests never generate the
    20k-scene train split to fit the real one (modules: ``pytestmark = pytest.mark.usefixtures("small_prior")``)."""
    from hmrcritic.agent.prior import fit_gmm, pose_features, set_pose_prior
    from hmrcritic.hmr.poses import sample_poses

    set_pose_prior(fit_gmm(pose_features(sample_poses(300, seed=11)["body_pose"]), components=2, iters=5))
    yield
    set_pose_prior(None)


@pytest.fixture(scope="module")
def explore_prior():
    """The pose prior cached for this home as one fitted on 600 poses (4 components): what the exploration
    tests learn against (``pytestmark = pytest.mark.usefixtures("explore_prior")``)."""
    from hmrcritic import config
    from hmrcritic.agent import prior
    from hmrcritic.hmr.poses import sample_poses

    fitted = prior.fit_gmm(prior.pose_features(sample_poses(600, seed=0)["body_pose"]), components=4, iters=8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(prior._CACHE, str(config.cache_dir()), fitted)
        yield


@pytest.fixture()
def memory_held_elsewhere():
    """``with memory_held_elsewhere(path):`` — another process holds the memory at ``path`` for "an exploration"
    (``MemoryStore.exclusive``) until the block ends: for the tests of what a second job may not do."""

    @contextlib.contextmanager
    def hold(path):
        code = textwrap.dedent(f"""
            import sys
            from hmrcritic.memory.store import MemoryStore
            with MemoryStore({str(path)!r}, seed_starter=False).exclusive("an exploration"):
                print("held", flush=True)
                sys.stdin.readline()
        """)
        holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            yield
        finally:
            holder.communicate("\n", timeout=60)

    return hold


# ---- a local Chroma server (`chroma run`, shipped with chromadb) for the --chroma-url path ------------------
def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package), for tests of its measuring logic."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upright_scenes(body, n: int = 2) -> dict:
    """``n`` labelled scenes in memory, as ``hmr.evaluate._load_labelled`` returns them: an upright body 3 m in front
    of a 256² camera, every keypoint visible (tests evaluate on these without generating a split)."""
    import math

    from hmrcritic.hmr.camera import default_intrinsics, project

    go = torch.tensor([[math.pi, 0.0, 0.0]]).expand(n, 3).contiguous()
    bp, be = torch.zeros(n, 69), torch.zeros(n, 10)
    tr = torch.tensor([[0.0, 0.0, 3.0]]).expand(n, 3).contiguous()
    K = default_intrinsics(256, 256).expand(n, 3, 3).contiguous()
    kp = torch.cat([project(body.coco17(body(go, bp, be, tr)), K), torch.ones(n, 17, 1)], -1)
    return {"keypoints": kp, "K": K, "image_size": torch.tensor([[256.0, 256.0]]).expand(n, 2).contiguous(),
            "global_orient": go, "body_pose": bp, "betas": be, "transl": tr}


def start_chroma_server(data) -> tuple[subprocess.Popen, int]:
    """Start `chroma run` on a free port with its data in `data`; skip the test when it cannot run here.

    The port is freed before `chroma run` binds it (it must bind it itself), so another process may take it in
    between: then our server exits (the port is in use) while the other one may answer the heartbeat. A server is
    taken as ours only when the heartbeat answers, our process still runs and its database is in `data`; otherwise
    another port is tried (three in all) rather than skipping the tests, or talking to someone else's server."""
    import shutil
    import socket
    import time
    import urllib.request
    from pathlib import Path

    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(exe).exists():
        pytest.skip("no `chroma` executable to start a server")
    exited = None
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([exe, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            except Exception:
                time.sleep(0.3)
                continue
            time.sleep(0.5)  # a server that lost the port exits at once
            if proc.poll() is None and (Path(data) / "chroma.sqlite3").exists():
                return proc, port
        if proc.poll() is None:
            stop_process(proc)
            pytest.skip("`chroma run` did not answer within 30 s")
        exited = proc.returncode
    pytest.skip(f"`chroma run` exited with code {exited} on three ports")


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate, then kill if it does not end within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def chroma_server_port(tmp_path_factory):
    """Port of one local Chroma server for the whole session (about 3 s to start)."""
    proc, port = start_chroma_server(tmp_path_factory.mktemp("chroma-server"))
    yield port
    stop_process(proc)


@pytest.fixture()
def chroma_url(chroma_server_port):
    """The session's server URL, emptied of hmrcritic's collections before each test."""
    import chromadb

    from hmrcritic.memory.store import COLLECTIONS

    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server_port)
    for name in COLLECTIONS:
        with contextlib.suppress(Exception):  # absent
            client.delete_collection(name)
    return f"http://127.0.0.1:{chroma_server_port}"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[str, str]:
    """An overlay and a side grid for VLM-judge tests (random pixels: the stub server checks that they decode);
    tests/test_vlm_judge.py has its own, of other sizes."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("grids")
    rng = np.random.default_rng(1)
    for name in ("overlay.png", "side.png"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / name)
    return str(d / "overlay.png"), str(d / "side.png")
