"""Review s15: two processes critiquing one group id at once must not share one checkpoint thread.

Real subprocesses sequenced by pipes (no sleeps that race): process A critiques group ``g`` and stops after its
first node until told to go on; process B critiques ``g`` meanwhile. B must wait for A (saying so) and then
find A's finished thread, as it would serially."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 90  # generous: each process imports torch and fits a small prior (seconds on a busy machine)

# argv: checkpoint file, group id, hypotheses seed, "hold" (stop after the first node until a line on stdin) or
# "wait" (read one line on stdin before critiquing). Prints "started" (hold: A holds the group), then one line
# "RESULT <json>". A ("hold") also critiques its inputs under another id for the reference, and group g again.
_WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[5])
    import numpy as np
    from hmrcritic.agent import runs
    runs.LOCK_NOTE_AFTER_S = 0.0  # say at once that it waits (the test reads it); harmless where no lock exists
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.groups import perturb_group
    from hmrcritic.agent.prior import fit_gmm, pose_features, set_pose_prior
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.poses import sample_poses
    from test_agent_graph import make_scene

    set_pose_prior(fit_gmm(pose_features(sample_poses(300, seed=11)["body_pose"]), components=2, iters=5))
    saver = open_checkpointer(sys.argv[1])
    gid, seed, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = make_scene(3)
    h = perturb_group(s, 4, np.random.default_rng(seed))
    cfg = AgentConfig(render=False, use_memory=False, max_reflections=0)

    def hold(node, update, seconds):
        if mode == "hold" and node == "render":
            print("started", flush=True)
            sys.stdin.readline()

    if mode == "wait":
        print("ready", flush=True)
        sys.stdin.readline()
    out = {}
    try:
        r = critique_group(s, h, config=cfg, group_id=gid, checkpointer=saver, on_update=hold)
        out.update(overall=r.overall, finished_earlier=r.finished_earlier, run_dir=r.run_dir)
    except InputError as exc:
        out["error"] = str(exc)
    if mode == "hold":
        mode = ""
        out["ref"] = critique_group(s, h, config=cfg, group_id="ref-" + gid, checkpointer=saver).overall
        try:  # what the thread of g holds now
            again = critique_group(s, h, config=cfg, group_id=gid, checkpointer=saver)
            out["again"] = {"overall": again.overall, "finished_earlier": again.finished_earlier}
        except InputError as exc:
            out["again"] = {"error": str(exc)}
        with np.load(out["run_dir"] + "/inputs.npz") as z:  # the arrays its run folder holds are its own
            out["folder_is_mine"] = bool(np.array_equal(z["body_pose"], h["body_pose"]))
    print("RESULT " + json.dumps(out), flush=True)
""")


class _Proc:
    """A worker with its merged stdout/stderr read line by line in a thread (reads with timeouts)."""

    def __init__(self, script: Path, env: dict, *args: str):
        self.p = subprocess.Popen([sys.executable, str(script), *args, str(TESTS)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, *markers: str) -> str | None:
        """The first line containing one of ``markers``; None when the process ended without one."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"no {markers} within {TIMEOUT_S} s; output so far: {self.seen}") from None
            if line is None:
                return None
            self.seen.append(line)
            if any(m in line for m in markers):
                return line

    def send(self, text: str = "go") -> None:
        try:
            self.p.stdin.write(text + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):  # it has finished already (or never read): nothing to tell it
            pass

    def result(self) -> dict:
        line = self.until("RESULT ")
        assert line is not None, f"no result; output: {self.seen}"
        self.p.wait(timeout=TIMEOUT_S)
        return json.loads(line.split("RESULT ", 1)[1])

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def _race(tmp_path: Path, seed_b: int) -> tuple[dict, dict, bool]:
    """A critiques g (hypotheses seed 1) and stops after its first node; B critiques g (``seed_b``) meanwhile.
    Returns A's and B's results and whether B said it waits for another process."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path / "home"), "HMRCRITIC_RUNS": str(tmp_path / "runs")}
    ckpt = str(tmp_path / "ckpt.sqlite")
    a = _Proc(script, env, ckpt, "g", "1", "hold")
    b = _Proc(script, env, ckpt, "g", str(seed_b), "wait")
    try:
        assert a.until("started") is not None, f"A never started: {a.seen}"
        assert b.until("ready") is not None, f"B never got ready: {b.seen}"
        b.send()  # B critiques g while A holds it after its first node
        waited = b.until("another process", "RESULT ") is not None and "another process" in b.seen[-1]
        a.send()  # A goes on (B, if it waits, follows)
        ra = a.result()
        if waited:
            rb = b.result()
        else:  # B finished without waiting: its result was the line just read
            rb = json.loads(b.seen[-1].split("RESULT ", 1)[1]) if b.seen and "RESULT " in b.seen[-1] else {}
        return ra, rb, waited
    finally:
        a.kill()
        b.kill()


def test_a_second_process_with_other_inputs_waits_and_is_refused(tmp_path):
    """Two processes critiquing group g with different hypotheses at once: B found A's unfinished thread,
    deleted it, wrote its hypotheses over A's in the one run folder and "succeeded" (a result the thread no
    longer held once A finished), leaving A's thread beside B's arrays (anything reading the run folder got
    the wrong bodies). B must wait, then be refused as serially ("different inputs"), and the thread and run
    folder of g must hold A's critique of A's own hypotheses."""
    ra, rb, waited = _race(tmp_path, seed_b=2)
    assert waited, f"B did not wait for A: {rb}"
    assert "already critiqued with different inputs" in rb.get("error", ""), rb
    assert ra["overall"] == pytest.approx(ra["ref"]), "A did not score its own hypotheses"
    assert ra["again"].get("finished_earlier") and ra["again"]["overall"] == pytest.approx(ra["ref"]), ra
    assert ra["folder_is_mine"], "the run folder of g holds B's hypotheses under A's thread"


def test_a_second_process_with_the_same_inputs_gets_the_first_ones_result(tmp_path):
    """Same group, same inputs, at once: B ran on A's unfinished thread beside A. It must wait and return A's
    finished result (``finished_earlier``), computing nothing."""
    ra, rb, waited = _race(tmp_path, seed_b=1)
    assert waited, f"B did not wait for A: {rb}"
    assert rb.get("finished_earlier") is True, rb
    assert rb["overall"] == pytest.approx(ra["overall"]) and ra["overall"] == pytest.approx(ra["ref"])


# holds (or tries) thread locks on argv[1] as told line by line on stdin: "try <thread>" / "hold <thread>" /
# "release <thread>"; answers one line each
_LOCKER = textwrap.dedent("""
    import sys
    from contextlib import ExitStack
    from hmrcritic.agent.runs import thread_lock
    held = {}
    for line in sys.stdin:
        op, thread = line.split()
        if op == "try":
            with thread_lock(sys.argv[1], thread, wait=False) as got:
                print("got" if got else "busy", flush=True)
        elif op == "hold":
            stack = ExitStack()
            got = stack.enter_context(thread_lock(sys.argv[1], thread, wait=False))
            held[thread] = stack
            print("got" if got else "busy", flush=True)
        else:
            held.pop(thread).close()
            print("released", flush=True)
""")


def test_thread_lock_excludes_other_processes_per_thread(tmp_path):
    """The lock helper itself: a thread held by one process cannot be taken by another until released; two
    thread ids do not block each other; in one process it is counted, not exclusive (critique_group's own
    lock serialises threads there), and the last holder's release frees it."""
    from hmrcritic.agent.runs import THREAD_LOCK_SUFFIX, thread_lock

    db = tmp_path / "ckpt.sqlite"
    script = tmp_path / "locker.py"
    script.write_text(_LOCKER)
    other = subprocess.Popen([sys.executable, str(script), str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)

    def ask(line: str) -> str:
        other.stdin.write(line + "\n")
        other.stdin.flush()
        return other.stdout.readline().strip()

    try:
        with thread_lock(db, "g") as got:
            assert got
            assert (tmp_path / ("ckpt.sqlite" + THREAD_LOCK_SUFFIX)).is_file()
            with thread_lock(db, "g", wait=False) as again:  # this process already holds it: counted
                assert again
            assert ask("try g") == "busy"  # still held after the inner release
            assert ask("try h") == "got"  # another thread of the same database is free
            assert ask("hold h") == "got"
            with thread_lock(db, "h", wait=False) as got_h:  # held by the other process now
                assert got_h is False
        assert ask("try g") == "got"  # released at the end of the block
        assert ask("release h") == "released"
        with thread_lock(db, "h", wait=False) as got_h:
            assert got_h
        with thread_lock(None, "g", wait=False) as free:  # an in-memory checkpointer: nothing to lock
            assert free
    finally:
        other.stdin.close()
        other.wait(timeout=TIMEOUT_S)


def test_a_forked_child_holds_none_of_its_parents_thread_locks(tmp_path):
    """POSIX locks do not pass to a forked child: one that believed it held its parent's thread (the parent's
    count copied into it) ran beside the parent's critique unguarded."""
    from hmrcritic.agent.runs import thread_lock

    db = tmp_path / "ckpt.sqlite"
    r, w = os.pipe()
    with thread_lock(db, "g"):
        pid = os.fork()
        if pid == 0:  # the child: its non-blocking try must see the parent's lock
            code = 1
            try:
                with thread_lock(db, "g", wait=False) as got:
                    code = 3 if got else 0
            finally:
                os.write(w, b"x")
                os._exit(code)
        os.read(r, 1)
        _, status = os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert os.waitstatus_to_exitcode(status) == 0, "the child took the lock its parent holds"


def test_a_forked_child_can_critique_a_group_its_parent_was_critiquing():
    """A child forked while another thread of the parent critiqued group g (a notebook's background critique,
    multiprocessing's fork) inherited that thread's held in-process lock, which nobody in the child ever
    releases: its own critique of g waited for ever."""
    from hmrcritic.agent import api

    holding, done = threading.Event(), threading.Event()

    def parent_critique():
        with api._one_critique_per_thread("g"):
            holding.set()
            done.wait(TIMEOUT_S)

    t = threading.Thread(target=parent_critique)
    t.start()
    try:
        assert holding.wait(TIMEOUT_S)
        pid = os.fork()
        if pid == 0:  # the child: enter g in a thread, never waiting for ever
            code = 1
            try:
                entered = threading.Event()

                def child_critique():
                    with api._one_critique_per_thread("g"):
                        entered.set()

                threading.Thread(target=child_critique, daemon=True).start()
                code = 0 if entered.wait(10) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        done.set()
        t.join()
    assert os.waitstatus_to_exitcode(status) == 0, "the child waited for its parent's critique"
