"""Split generation against kills and concurrency, and split files that are damaged on disk: what a killed
run leaves is removed by the next one (never a live process's), two processes generating the same split at
once both succeed, and a truncated or incomplete file gives one AssetError line naming it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from hmrcritic.errors import AssetError
from hmrcritic.hmr import data as D
from hmrcritic.hmr.body import load_body_model


def _run(code: str, home, *args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HMRCRITIC_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env, capture_output=True, text=True,
        timeout=300, cwd=home,  # not the checkout: `-c` puts the working folder first on sys.path
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_generation_leaves_nothing_after_the_next_run(tmp_path):
    root = tmp_path / "data"
    # a generation killed (no cleanup runs, as with kill -9) while it writes its shards into the staging folder
    killed = _run(
        """
        import os, sys
        from hmrcritic.hmr import data as D
        D.atomic_save_npz = lambda *a, **k: os._exit(9)
        D.generate_split("test", sys.argv[1] + "/test", n=4, quiet=True)
        """,
        tmp_path, root, check=False,
    )
    assert killed.returncode == 9
    left = [p.name for p in root.iterdir() if p.name.startswith(".staging-test-")]
    assert len(left) == 1
    dead = _dead_pid()
    (root / f".old-test-{dead}").mkdir()  # killed between moving the old split away and moving the new one in
    (root / f".staging-wild-{dead}").mkdir()  # another split's: only a run for that split removes it
    live = root / f".staging-test-{os.getppid()}"  # a live process's: it may be writing it right now
    live.mkdir()
    D.generate_split("test", root / "test", n=3, quiet=True)
    names = sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))
    assert names == sorted([live.name, f".staging-wild-{dead}", "test"])
    assert len(D.SceneSet(root / "test")) == 3


def test_two_processes_generating_one_split_at_once(tmp_path):
    code = """
        import os, sys
        from hmrcritic.hmr import data as D
        from hmrcritic.hmr.body import load_body_model
        body = load_body_model()
        root = sys.argv[1]
        D.generate_split("test", f"{root}/warm-{os.getpid()}/test", n=1, body=body, quiet=True)  # imports done
        print("ready", flush=True)
        sys.stdin.readline()  # the go, sent to all three at once when all are ready
        failures = []
        for _ in range(200):
            try:
                D.generate_split("test", root + "/data/test", n=1, body=body, quiet=True)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
        print(len(failures), failures[:1])
        """
    env = {**os.environ, "HMRCRITIC_HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)], env=env, cwd=tmp_path,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    # the loops start together, after their imports: each says "ready", then all are told to go at once (a
    # barrier, instead of a start time 10 s ahead that every run waited out whatever its imports took)
    ready = [p.stdout.readline() for p in procs]
    for p in procs:
        with contextlib.suppress(BrokenPipeError):  # one that died before it was ready: said below
            p.stdin.write("go\n")
            p.stdin.flush()
    outs = [p.communicate(timeout=300) for p in procs]
    assert ready == ["ready\n"] * 3, (ready, [err[-2000:] for _, err in outs])
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.startswith("0 "), out  # no run failed (Directory not empty / No such file mid-swap)
    root = tmp_path / "data"
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == ["test"]
    assert len(D.SceneSet(root / "test")) == 1


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    return D.generate_split("wild", tmp_path_factory.mktemp("w") / "wild", n=6, body=load_body_model(), quiet=True)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_labels_eval_names_the_file(wild, tmp_path):
    split = _copy(wild, tmp_path / "wild")
    f = split / "labels_eval.npz"
    f.write_bytes(f.read_bytes()[:100])
    ss = D.SceneSet(split)
    with pytest.raises(AssetError, match=r"labels_eval\.npz: unreadable evaluation labels"):
        ss.eval_labels()
    f.unlink()
    with pytest.raises(AssetError, match=r"labels_eval\.npz"):
        ss.eval_labels()


def test_shard_without_a_needed_array_names_file_and_key(wild, tmp_path):
    import numpy as np

    split = _copy(wild, tmp_path / "wild")
    shard = split / "shard_00000.npz"
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files if k != "keypoints"}
    np.savez(shard, **arrays)
    with pytest.raises(AssetError, match=r"shard_00000\.npz: shard has no keypoints"):
        D.SceneSet(split)[0]


@pytest.mark.parametrize("manifest", [{}, [], {"split": "wild", "has_labels": False, "shards": [{"n": 6}]}])
def test_malformed_manifest_is_one_line(wild, tmp_path, manifest):
    split = _copy(wild, tmp_path / "wild")
    (split / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AssetError, match=r"manifest\.json: not a split manifest"):
        D.SceneSet(split)
