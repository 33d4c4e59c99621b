"""Export engine: dataset format and validation, resumability after kill -9, failures, and identical records
from the serial, multi-process and Ray executors.

Scoring is injected (``score_group``) with ``fake_score`` below — a deterministic function of the
hypotheses — so these tests exercise the export engine itself; the real agent is covered by the
end-to-end test at the bottom (marked slow). The diffusion model, body model and sampler are the real ones
(a tiny randomly initialised checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hmrcritic.agent.schema import HypothesisScore
from hmrcritic.alignment import dataset as D
from hmrcritic.alignment.export import ExportConfig, export, format_summary
from hmrcritic.errors import AssetError, InputError, JudgeError

TESTS = Path(__file__).resolve().parent
SCORER = "test_export:fake_score"


@dataclasses.dataclass
class Inp:
    """Sample-like input with a 3D label field, which export must strip before scoring."""

    sample_id: str
    keypoints: np.ndarray
    K: np.ndarray
    image_size: tuple
    joints3d: np.ndarray | None = None


@dataclasses.dataclass
class Scored:
    scores: list
    memory_version: str = "test-memory"


def fake_score(sample, hypotheses, judge="builtin", memory=None, config=None, group_id=None):
    """Deterministic stand-in for the agent: score = closeness of each hypothesis to the group's mean pose."""
    assert sample.joints3d is None, "a 3D label reached the scorer"
    assert config["learn"] is False
    delay = float(os.environ.get("HMRCRITIC_TEST_SCORE_DELAY", "0"))
    if delay:
        time.sleep(delay)
    if sample.sample_id in os.environ.get("HMRCRITIC_TEST_FAIL_IDS", "").split(","):
        raise JudgeError(f"judge gave up on {sample.sample_id}")
    pose = hypotheses.body_pose[0].double()
    dev = (pose - pose.mean(0)).norm(dim=1)
    overall = (10 * (1 - dev / (dev.max() + 1e-9))).clamp(0, 10)
    if sample.sample_id.endswith("tie"):
        overall = torch.full_like(overall, 5.0)
    return Scored(
        [
            HypothesisScore(
                index=i,
                motion_structure=o,
                physical_feasibility=o,
                image_alignment=o,
                overall=o,
                rationale=f"deviation {d:.3f}",
            )
            for i, (o, d) in enumerate(zip(overall.tolist(), dev.tolist(), strict=True))
        ]
    )


def make_inputs(n: int, seed: int = 0, tie_last: bool = False) -> list[Inp]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kp = np.concatenate([rng.uniform(150, 350, size=(17, 2)), rng.uniform(0.5, 1, size=(17, 1))], 1)
        sid = f"img{i:03d}" + ("tie" if tie_last and i == n - 1 else "")
        out.append(
            Inp(
                sid,
                kp.astype(np.float32),
                np.array([[500, 0, 256], [0, 500, 256], [0, 0, 1]], np.float32),
                (512, 512),
                joints3d=rng.normal(size=(24, 3)).astype(np.float32),
            )
        )
    return out


def tiny_model(path: Path) -> Path:
    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, save_model

    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2, T=100))
    for head in (model.joint_out, model.shape_out):
        torch.nn.init.normal_(head.weight, std=0.3)
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def cfg_for(out, model_path, **kw) -> ExportConfig:
    base = {
        "split": "inline",
        "num_generations": 4,
        "sample_steps": 2,
        "score_group": SCORER,
        "use_memory": False,
    }
    return ExportConfig(out=str(out), model=str(model_path), **{**base, **kw})


def test_export_writes_a_valid_dataset_without_labels(model_path, tmp_path):
    s = export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(4, tie_last=True))
    assert (s.groups, s.new_groups, s.failures, s.pairs) == (4, 4, 0, 3)
    assert s.zero_variance_share == 0.25 and sum(s.score_histogram.values()) == 16
    rep = D.validate_dataset(tmp_path / "ds")
    assert rep.ok, rep.errors
    recs = D.read_manifest(tmp_path / "ds")
    assert [r.input_id for r in recs] == ["img000", "img001", "img002", "img003tie"]
    assert len({r.group_id for r in recs}) == 4 and recs[-1].zero_variance
    r = recs[0]
    assert r.memory_version == "test-memory" and r.num_hypotheses == 4 and r.x_dim == 154
    assert np.allclose(r.advantages, D.advantages_np([x.overall for x in r.scores]))
    for rec in recs:
        with np.load(tmp_path / "ds" / rec.condition.path) as z:
            assert sorted(z.files) == ["K", "image_size", "keypoints"]
        with np.load(tmp_path / "ds" / rec.hypotheses.path) as z:
            assert sorted(z.files) == sorted(D.HYP_KEYS) and z["x0"].shape == (4, 154)
    pair = json.loads((tmp_path / "ds" / "pairs.jsonl").read_text().splitlines()[0])
    assert pair["chosen"]["overall"] > pair["rejected"]["overall"] and pair["prompt"]["condition"].endswith("cond.npz")
    ds = D.GroupPreferenceDataset(tmp_path / "ds")
    item = ds[0]
    assert item["x0"].shape == (4, 154) and item["overall"].shape == (4,)
    # same command again: nothing new, same bytes
    before = (tmp_path / "ds" / "manifest.jsonl").read_bytes()
    again = export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(4, tie_last=True))
    assert again.new_groups == 0 and again.done_before == 4
    assert (tmp_path / "ds" / "manifest.jsonl").read_bytes() == before


def test_failures_are_recorded_and_retried(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "img001")
    s = export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(3))
    assert s.groups == 2 and s.failures == 1 and s.failure_reasons == {"JudgeError": 1}
    fails = [json.loads(line) for line in (tmp_path / "ds" / "failures.jsonl").read_text().splitlines()]
    assert [f["input_id"] for f in fails] == ["img001"] and "judge gave up" in fails[0]["error"]
    assert "judge gave up" in s.first_failure and "failures.jsonl" in format_summary(s)
    rep = D.validate_dataset(tmp_path / "ds")
    assert rep.ok and any("1 input(s) failed" in w for w in rep.warnings)
    # failing again on the next run is still one open failure, not two
    export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(3))
    assert len((tmp_path / "ds" / "failures.jsonl").read_text().splitlines()) == 1
    assert any("1 input(s) failed" in w for w in D.validate_dataset(tmp_path / "ds").warnings)
    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "")
    s2 = export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(3))
    assert s2.groups == 3 and s2.new_groups == 1 and s2.failures == 0
    assert (tmp_path / "ds" / "failures.jsonl").read_text() == ""
    assert D.validate_dataset(tmp_path / "ds").ok


def test_a_second_export_into_the_same_folder_is_refused_at_once(model_path, tmp_path):
    """Two exports into one folder would both sample and score every group; the second fails, naming the first."""
    import subprocess
    import sys

    out = tmp_path / "ds"
    out.mkdir()
    code = ("import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
            "print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / ".export.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="another export into this folder is running"):
            export(cfg_for(out, model_path), inputs=make_inputs(2))
    finally:
        holder.communicate("\n", timeout=60)
    assert export(cfg_for(out, model_path), inputs=make_inputs(2)).groups == 2  # free again afterwards


def test_resume_refuses_other_settings(model_path, tmp_path):
    export(cfg_for(tmp_path / "ds", model_path), inputs=make_inputs(1))
    with pytest.raises(InputError, match="num_generations"):
        export(cfg_for(tmp_path / "ds", model_path, num_generations=5), inputs=make_inputs(1))
    with pytest.raises(InputError, match="exactly one"):
        ExportConfig(out="x", split="wild", data="y")


def test_validate_catches_corruption(model_path, tmp_path):
    root = tmp_path / "ds"
    export(cfg_for(root, model_path), inputs=make_inputs(3))
    assert D.validate_dataset(root).ok
    manifest = root / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines + [lines[0], lines[1][:40]]))  # duplicate + torn line
    rep = D.validate_dataset(root)
    assert not rep.ok and any("duplicate" in e for e in rep.errors) and any("torn" in e for e in rep.errors)
    kept, dropped = D.repair_manifest(root)
    assert len(kept) == 3 and dropped == 2 and D.validate_dataset(root).ok
    rec = kept[0]
    arrays = D.load_npz(root / rec.hypotheses.path)
    arrays["x0"] = arrays["x0"] + 1
    D.atomic_save_npz(root / rec.hypotheses.path, **arrays)
    rep = D.validate_dataset(root)
    assert any("checksum mismatch" in e for e in rep.errors)
    cond = D.load_npz(root / kept[1].condition.path)
    D.atomic_save_npz(root / kept[1].condition.path, **cond, joints3d=np.zeros((24, 3), np.float32))
    rep = D.validate_dataset(root)
    assert any("3D label" in e and "joints3d" in e for e in rep.errors)


def _manifest(root: Path) -> list[str]:
    return (root / "manifest.jsonl").read_text().splitlines()


def dying_score(sample, hypotheses, **kw):
    """fake_score, except that the worker process dies on the ids in HMRCRITIC_TEST_EXIT_IDS (killed, OOM)."""
    if sample.sample_id in os.environ.get("HMRCRITIC_TEST_EXIT_IDS", "").split(","):
        os._exit(3)
    return fake_score(sample, hypotheses, **kw)


@pytest.mark.slow
def test_a_dead_worker_fails_its_groups_instead_of_hanging_the_export(model_path, tmp_path, monkeypatch):
    """multiprocessing.Pool waited forever for a task whose worker had died; now the unfinished groups are
    failures (stage "worker") and a re-run exports them."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("HMRCRITIC_TEST_EXIT_IDS", "img001")
    inputs = make_inputs(4)
    cfg = cfg_for(tmp_path / "ds", model_path, workers=2, score_group="test_export:dying_score")
    s = export(cfg, inputs=inputs)
    fails = [json.loads(line) for line in (tmp_path / "ds" / "failures.jsonl").read_text().splitlines()]
    assert s.failures >= 1 and s.groups + s.failures == 4
    assert any(f["input_id"] == "img001" and f["stage"] == "worker" for f in fails)
    assert [f["input_id"] for f in fails] == sorted(f["input_id"] for f in fails)  # input order
    monkeypatch.setenv("HMRCRITIC_TEST_EXIT_IDS", "")
    again = export(cfg, inputs=inputs)
    assert again.groups == 4 and again.failures == 0 and D.validate_dataset(tmp_path / "ds").ok


@pytest.mark.slow
def test_process_pool_gives_the_same_records_as_serial(model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    inputs = make_inputs(4)
    export(cfg_for(tmp_path / "serial", model_path), inputs=inputs)
    s = export(cfg_for(tmp_path / "pool", model_path, workers=2), inputs=inputs)
    assert s.executor == "processes×2" and s.groups == 4
    assert _manifest(tmp_path / "pool") == _manifest(tmp_path / "serial")
    assert D.validate_dataset(tmp_path / "pool").ok


@pytest.mark.slow
def test_ray_gives_the_same_records_as_serial(model_path, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "PYTHONPATH": os.environ["PYTHONPATH"],
                    "HMRCRITIC_HOME": os.environ["HMRCRITIC_HOME"],
                }
            },
        )
    except Exception as exc:  # pragma: no cover - depends on the sandbox
        pytest.skip(f"Ray cannot start here: {type(exc).__name__}: {exc}")
    try:
        inputs = make_inputs(3)
        export(cfg_for(tmp_path / "serial", model_path), inputs=inputs)
        s = export(cfg_for(tmp_path / "ray", model_path, workers=2, ray_address="auto"), inputs=inputs)
        assert s.executor.startswith("ray") and s.groups == 3
        assert _manifest(tmp_path / "ray") == _manifest(tmp_path / "serial")
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def wild_split(tmp_path_factory):
    from hmrcritic.hmr.data import generate_split

    return generate_split("wild", tmp_path_factory.mktemp("data") / "wild", n=8, quiet=True)


def test_kill_9_mid_run_then_rerun_finishes_without_duplicates(model_path, wild_split, tmp_path):
    """`hmrcritic export` killed with SIGKILL mid-run, a torn line on top, then the very same command again."""
    root, n = tmp_path / "ds", 8
    cmd = [
        sys.executable,
        "-m",
        "hmrcritic.cli",
        "export",
        "--data",
        str(wild_split),
        "--model",
        str(model_path),
        "--out",
        str(root),
        "--num-generations",
        "4",
        "--steps",
        "2",
        "--scorer",
        SCORER,
        "--no-memory",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "HMRCRITIC_TEST_SCORE_DELAY": "0.3",
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    manifest = root / "manifest.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(_manifest(root))
    assert 2 <= written < n
    killed = D.validate_dataset(root)  # before the torn line: valid, but said to be unfinished
    assert killed.ok and any("did not finish" in w for w in killed.warnings), killed.warnings
    with open(manifest, "a") as fh:  # what a kill in the middle of a write leaves behind
        fh.write(_manifest(root)[0][:57])
    assert not D.validate_dataset(root).ok
    env["HMRCRITIC_TEST_SCORE_DELAY"] = "0"
    res = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout)
    assert s["repaired_lines"] == 1 and s["done_before"] == written and s["new_groups"] == n - written
    rep = D.validate_dataset(root)
    assert rep.ok and rep.groups == n and not any("did not finish" in w for w in rep.warnings), rep
    ids = [json.loads(line)["group_id"] for line in _manifest(root)]
    assert len(ids) == len(set(ids)) == n
    # identical to an uninterrupted export
    clean = ExportConfig(
        out=str(tmp_path / "clean"),
        data=str(wild_split),
        model=str(model_path),
        num_generations=4,
        sample_steps=2,
        score_group=SCORER,
        use_memory=False,
    )
    export(clean)
    assert _manifest(root) == _manifest(tmp_path / "clean")


def test_cli_export_validate_and_finetune(model_path, wild_split, tmp_path, capsys):
    from hmrcritic.cli import main

    out = tmp_path / "prefs"
    args = [
        "export",
        "--data",
        str(wild_split),
        "--model",
        str(model_path),
        "--out",
        str(out),
        "--limit",
        "3",
        "--num-generations",
        "3",
        "--steps",
        "2",
        "--scorer",
        SCORER,
        "--no-memory",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["groups"] == 3 and summary["failures"] == 0
    assert main(["export", "validate", str(out)]) == 0
    assert {r.split for r in D.read_manifest(out)} == {"wild"}
    assert "OK" in capsys.readouterr().out
    assert (
        main(
            [
                "finetune",
                "--data",
                str(out),
                "--model",
                str(model_path),
                "--out",
                str(tmp_path / "a.pt"),
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--num-generations",
                "3",
                "--json",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert Path(res["checkpoint"]).exists() and res["final"]["step"] == 2
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text() + '{"torn": ')
    assert main(["export", "validate", str(out)]) == 1
    assert "not valid JSON" in capsys.readouterr().out
    assert main(["export", "--split", "wild", "--data", str(wild_split), "--out", str(out)]) == 2
    assert main(["finetune", "--data", str(out), "--out", str(tmp_path / "b.pt"), "--objective", "ppo"]) == 2


@pytest.mark.slow
def test_export_with_the_real_agent(model_path, wild_split, tmp_path):
    """The default scorer: the LangGraph critique agent with the builtin judge on a frozen starter memory."""
    pytest.importorskip("hmrcritic.agent.api")
    from hmrcritic.agent.prior import fit_gmm, pose_features, set_pose_prior
    from hmrcritic.hmr.poses import sample_poses

    # the agent's pose prior is normally fitted on the 20k-scene train split; a prior fitted on 600 poses
    # of the same pose source keeps this test to seconds (serial export: it runs in this process)
    set_pose_prior(fit_gmm(pose_features(sample_poses(600, seed=0)["body_pose"])))
    try:
        s = export(
            ExportConfig(
                out=str(tmp_path / "prefs"),
                data=str(wild_split),
                model=str(model_path),
                num_generations=4,
                sample_steps=2,
                memory=str(tmp_path / "memory"),
                limit=3,
            )
        )
    finally:
        set_pose_prior(None)
    assert s.failures == 0, s.failure_reasons
    rep = D.validate_dataset(tmp_path / "prefs")
    assert rep.ok and rep.groups == 3, rep.errors
    recs = D.read_manifest(tmp_path / "prefs")
    assert all(r.memory_version not in ("", "none") for r in recs)
    assert len({r.memory_version for r in recs}) == 1
    assert any(len({s.overall for s in r.scores}) > 1 for r in recs)
    # the dataset holds the results: no checkpoint thread, run folder or trace of an exported group is left
    from hmrcritic import config as hconfig
    from hmrcritic.agent.graph import open_checkpointer

    conn = open_checkpointer().conn
    for r in recs:  # the agent's thread id is export-<group id>-<run key>
        assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id LIKE ?",
                            (f"export-{r.group_id}-%",)).fetchone()[0] == 0
        assert not list((hconfig.runs_dir() / "groups").glob(f"export-{r.group_id}-*"))


def test_validate_catches_a_dataset_out_of_step_with_itself(model_path, tmp_path):
    """Each file valid alone, inconsistent together: pairs edited or missing, a group of another N than the
    header; and the reader names the file whose checksum changed."""
    root = tmp_path / "ds"
    export(cfg_for(root, model_path), inputs=make_inputs(3))
    assert D.validate_dataset(root).ok
    pairs = (root / "pairs.jsonl").read_text()
    (root / "pairs.jsonl").write_text("".join(pairs.splitlines(keepends=True)[1:]))
    assert any("not the pairs" in e for e in D.validate_dataset(root).errors)
    (root / "pairs.jsonl").unlink()
    assert any("pairs.jsonl: missing" in e for e in D.validate_dataset(root).errors)
    (root / "pairs.jsonl").write_text(pairs)
    header = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**header, "num_generations": 5}))
    assert any("the header says 5" in e for e in D.validate_dataset(root).errors)
    (root / "dataset.json").write_text(json.dumps(header))
    rec = D.read_manifest(root)[0]
    cond = dict(np.load(root / rec.condition.path))
    cond["K"] = cond["K"] * 2
    np.savez(root / rec.condition.path, **cond)
    # AssetError naming the checksum, not any error whose text holds "cond" (the file's path alone matched it)
    with pytest.raises(AssetError, match=r"cond.*checksum does not match manifest"):
        D.GroupPreferenceDataset(root)[0]


def test_resuming_a_vlm_export_with_another_model_is_refused(model_path, tmp_path, monkeypatch):
    """The header named the judge "vlm" only: an export resumed after HMRCRITIC_VLM_MODEL changed mixed two
    critics' scores in one dataset."""
    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:9/v1")  # never called: the scorer is fake_score
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    inputs = make_inputs(3)
    first = export(cfg_for(tmp_path / "ds", model_path, judge="vlm", limit=2), inputs=inputs)
    assert first.new_groups == 2
    assert D.read_header(tmp_path / "ds").judge_model == "model-a @ http://127.0.0.1:9/v1"
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-b")
    with pytest.raises(InputError, match="judge_model"):
        export(cfg_for(tmp_path / "ds", model_path, judge="vlm"), inputs=inputs)
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    again = export(cfg_for(tmp_path / "ds", model_path, judge="vlm"), inputs=inputs)
    assert (again.done_before, again.new_groups, again.groups) == (2, 1, 3)
    builtin = export(cfg_for(tmp_path / "b", model_path), inputs=inputs[:1])  # builtin: no model named
    assert builtin.groups == 1 and D.read_header(tmp_path / "b").judge_model is None
    # a vlm export from before the model was recorded: the model is unknown, said so (not "judge_model=None")
    header = D.read_header(tmp_path / "ds")
    header.judge_model = None
    D.write_header(tmp_path / "ds", header)
    with pytest.raises(InputError, match="before the judge's model was recorded"):
        export(cfg_for(tmp_path / "ds", model_path, judge="vlm"), inputs=inputs)
