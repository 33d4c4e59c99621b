"""Review round 18: Ctrl-C (SIGINT), SIGTERM and stopping long jobs, as a terminal or a service manager does it.

Each test starts the job as a subprocess in its own session and signals its process group (``os.killpg``), as a
terminal's Ctrl-C reaches every process of the foreground job, workers included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def sleepy_score(sample, hypotheses, **kw):
    """A scorer that marks that it started (a file per call in HMRCRITIC_TEST_MARKS) and then takes long (a slow
    VLM judge); imported by the export's worker processes."""
    marks = Path(os.environ["HMRCRITIC_TEST_MARKS"])
    (marks / f"{os.getpid()}-{sample.sample_id}").touch()
    time.sleep(float(os.environ.get("HMRCRITIC_TEST_SLEEP", "120")))
    from test_export import fake_score

    return fake_score(sample, hypotheses, **kw)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HMRCRITIC_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _wait_for(cond, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the job ended before the signal (rc {proc.returncode}): {out}\n{err}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the job never got where the signal was to be sent")
        time.sleep(0.05)


# ---- export --workers K: Ctrl-C stops the workers instead of waiting for the groups queued to them -----------
_POOL_EXPORT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C, also under a background shell
sys.path[:0] = [{tests!r}]
from test_export import cfg_for, make_inputs, tiny_model
from hmrcritic.alignment.export import export
from pathlib import Path
model = tiny_model(Path({out!r}).parent / "tiny.pt")
try:
    export(cfg_for({out!r}, model, workers=2, score_group="test_review_s18_interrupt:sleepy_score"),
           inputs=make_inputs(8))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_stops_an_export_with_workers_at_once(tmp_path):
    """Ctrl-C reaches the workers too; each turned the KeyboardInterrupt into the result of its group and took the
    next group already queued for it, which it then ran whole while the export waited in
    ``ProcessPoolExecutor.shutdown(wait=True)``: at the terminal nothing happened for a whole group's time (minutes
    with a VLM judge) and the result was thrown away."""
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", _POOL_EXPORT.format(tests=str(TESTS), out=str(out))],
                            cwd=tmp_path, env=_env(HMRCRITIC_TEST_MARKS=str(marks)), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(list(marks.iterdir())) >= 2, proc)  # both workers are scoring a group
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.time()
    try:
        out_text, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the export was still waiting for its workers 30 s after Ctrl-C")
    assert proc.returncode == 130 and "interrupted" in out_text, (proc.returncode, out_text, err)
    assert time.time() - t0 < 30
    # no worker left behind: every process of the job's group is gone
    assert _alive_in_group(proc.pid) == []


def _alive_in_group(pgid: int, wait: float = 5) -> list[str]:
    """The processes of group ``pgid`` still running (zombies waiting to be reaped do not count), after up to
    ``wait`` seconds for them to go."""
    deadline = time.time() + wait
    while True:
        ps = subprocess.run(["ps", "-e", "-o", "pgid=,stat=,args="], capture_output=True, text=True).stdout
        alive = [line for line in ps.splitlines()
                 if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.1)


# ---- SIGTERM (timeout, kill, systemd, docker stop, CI) stops a command as Ctrl-C does ------------------------
_LONG_TRAIN = """
import sys, time
from pathlib import Path
import hmrcritic.hmr.train as T
from hmrcritic.cli import main

def train_base(cfg, out, **kw):  # a long job with something to undo on the way out (an atomic write's temp file)
    tmp = Path(out) / ".state.pt.x1y2.tmp"
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp.write_text("half a state")
    try:
        print("long job started", flush=True)
        time.sleep(120)
    finally:
        tmp.unlink()
    return Path(out) / "model.pt"

T.train_base = train_base
sys.exit(main(["train-base", "--out", sys.argv[1]]))
"""


def _run_until(code: str, marker: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    while line and marker not in line:
        line = proc.stdout.readline()
    if marker not in line:
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"never reached {marker!r}: rc {proc.returncode}\n{out}\n{err}")
    return proc


def test_sigterm_stops_a_command_as_ctrl_c_does(tmp_path):
    """Python's default SIGTERM ended the process on the spot (exit -15, no message, no ``finally``): the temporary
    file of a write in progress stayed (a model's size, beside a finetune's output nothing cleans), a progress bar
    left the terminal's cursor hidden, and nothing said that a re-run resumes. Now the command winds down as on
    Ctrl-C and exits 143 (128 + SIGTERM) with one line that says it was terminated."""
    out = tmp_path / "run"
    proc = _run_until(_LONG_TRAIN, "long job started", str(out))
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "terminated (SIGTERM)" in err and "run the same command again to resume" in err, err
    assert "Traceback" not in err, err
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_second_sigterm_kills_at_once(tmp_path):
    """Winding down must not make a stuck command unkillable by the polite signal: the second SIGTERM is the
    default one again."""
    code = _LONG_TRAIN.replace("        tmp.unlink()", "        print('cleaning', flush=True); time.sleep(120)")
    proc = _run_until(code, "long job started", str(tmp_path / "run"))
    os.killpg(proc.pid, signal.SIGTERM)
    assert "cleaning" in proc.stdout.readline()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_main_puts_back_the_sigterm_handler_it_found():
    """In-process callers (tests, a notebook) get their SIGTERM handling back after ``main`` returns, and one
    they set themselves is never replaced."""
    from hmrcritic.cli import main

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert main(["--version"]) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def mine(signum, frame):
            pass

        signal.signal(signal.SIGTERM, mine)
        assert main(["--version"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ray_init_leaves_the_commands_sigterm_handler_in_place():
    """``ray.init`` installs its own SIGTERM handler (and the core worker a C-level one): a SIGTERM to
    ``export --ray-address local`` then ended the process past every ``finally``, ``ray.shutdown()`` never ran and
    the local cluster's ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` stayed running. The handler the CLI
    set is put back after the connection is made."""
    from hmrcritic.alignment import export as E

    class FakeRay:
        def init(self, **kw):
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))

    def cli_handler(signum, frame):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, cli_handler)
        E._ray_init(FakeRay(), "local", 1)
        assert signal.getsignal(signal.SIGTERM) is cli_handler
        # without a handler of the caller's (a library call), Ray's is left as Ray set it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        E._ray_init(FakeRay(), "local", 1)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, cli_handler)
    finally:
        signal.signal(signal.SIGTERM, before)


_LONG_FINETUNE = """
import sys, time
import hmrcritic.alignment.finetune as F
from hmrcritic.cli import main

def finetune(cfg, progress=False, **kw):  # generations_given (session 33) and later keywords
    # to the process's own stdout: the command sends the library's output to stderr when stdout is a pipe
    print("long job started", file=sys.__stdout__, flush=True)
    time.sleep(120)

F.finetune = finetune
sys.exit(main(["finetune", "--data", sys.argv[1], "--out", sys.argv[2]]))
"""


def test_sigterm_in_a_command_that_says_what_it_kept_still_exits_143(tmp_path):
    """export and finetune catch the interrupt to say what a re-run resumes from and leave by SystemExit(130):
    under SIGTERM the code is 143 all the same, after their own line."""
    (tmp_path / "prefs").mkdir()
    (tmp_path / "prefs" / "dataset.json").write_text("{}")  # the command refuses a folder without one (session 32)
    proc = _run_until(_LONG_FINETUNE, "long job started", str(tmp_path / "prefs"), str(tmp_path / "ft.pt"))
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err)
    assert "interrupted: no state saved yet" in err and "Traceback" not in err, err
