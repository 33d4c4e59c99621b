"""Session 21: follow-ups to the reviews' reports, outside the reviewers' files."""

from __future__ import annotations

from hmrcritic.cli import main


def test_learning_curve_on_one_split_is_refused_before_its_out_folder_is_made(tmp_path, capsys):
    """Exploring and holding out one split is refused — after ``--out`` had been made, leaving an empty folder."""
    out = tmp_path / "curve"
    rc = main(["learning-curve", "--split", "test", "--heldout-split", "test", "--memory-dir", str(tmp_path / "m"),
               "--out", str(out)])
    assert rc != 0 and "must differ from the exploration split" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "m").exists()


def test_evaluate_model_takes_a_checkpoint_path(tmp_path, monkeypatch, body):
    """``evaluate_model("ckpt.pt", …)`` (what the CLI's --model names) failed with "'str' object has no attribute
    'num_timesteps'"; a path is loaded as load_model loads it, with the same figures as the loaded model."""
    import torch

    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion, load_model, save_model
    from hmrcritic.hmr.evaluate import evaluate_model

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    torch.manual_seed(0)
    path = save_model(HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2)).eval(), tmp_path / "m.pt")
    kw = dict(split="test", num_generations=2, steps=2, limit=2, nn_baseline=False, body=body)
    by_path = evaluate_model(str(path), **kw)
    loaded = evaluate_model(load_model(path), **kw)
    timing = ("seconds", "hypotheses_per_s")
    assert {k: v for k, v in by_path.items() if k not in timing} == {k: v for k, v in loaded.items() if k not in timing}


def test_load_hypotheses_takes_bfloat16_tensors_and_a_one_input_groups_numpy():
    """A dict of bfloat16 tensors (a model run in bf16) was a bare "unsupported ScalarType BFloat16"; a
    HypothesisGroup of one input is taken, but its own ``numpy()`` dict ((1, N, …)) was refused."""
    import numpy as np
    import torch

    from hmrcritic.agent.api import load_hypotheses

    rng = np.random.default_rng(0)
    ours = {"global_orient": rng.normal(0, 0.3, (3, 3)), "body_pose": rng.normal(0, 0.2, (3, 69)),
            "betas": rng.normal(0, 1, (3, 10)), "transl": np.tile([0.0, 0.2, 5.0], (3, 1))}
    bf16 = load_hypotheses({k: torch.tensor(v).to(torch.bfloat16) for k, v in ours.items()})
    for k, v in ours.items():
        np.testing.assert_allclose(bf16[k], v, rtol=1e-2, atol=1e-2)
    batched = load_hypotheses({k: v[None] for k, v in ours.items()})
    for k, v in ours.items():
        np.testing.assert_allclose(batched[k], v.astype(np.float32))


def test_a_server_address_as_the_memory_folder_is_refused_without_its_password(tmp_path, monkeypatch, capsys):
    """``HMRCRITIC_MEMORY=http://bob:pw@host:8000`` (meant for a shared memory) was read as a relative path:
    ``memory stats`` made a Chroma database in ``./http:/bob:pw@host:8000/``, the password in its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMRCRITIC_MEMORY", "http://bob:FAKEmemPW1@127.0.0.1:8000")
    assert main(["memory", "stats"]) != 0
    err = capsys.readouterr().err
    assert "is a server address, not a folder" in err and "HMRCRITIC_CHROMA_URL" in err and "FAKEmemPW1" not in err
    assert list(tmp_path.iterdir()) == []
    # the home too (doctor alone caught it there): every folder below it was named after the address
    monkeypatch.delenv("HMRCRITIC_MEMORY")
    monkeypatch.setenv("HMRCRITIC_HOME", "http://bob:FAKEhomePW1@127.0.0.1:8000")
    assert main(["memory", "stats"]) != 0
    err = capsys.readouterr().err
    assert "HMRCRITIC_HOME=" in err and "is a server address, not a folder" in err and "FAKEhomePW1" not in err
    assert list(tmp_path.iterdir()) == []


def test_trace_json_is_scrubbed_like_the_text(tmp_path, monkeypatch, capsys):
    """``trace --json`` printed the records as stored; the text form is scrubbed against the secrets this process
    knows (one the writing process did not know stays out of both)."""
    import json

    from hmrcritic.agent.trace import TraceWriter

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))
    tw = TraceWriter("20260101-000000-000000-sec", "sec")
    tw.start(type("C", (), {"model_dump": lambda self: {}})())
    tw.error(RuntimeError("endpoint said: bad key sk-FAKE-tracejson-123456"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-FAKE-tracejson-123456")
    assert main(["trace", "--last", "--json"]) == 0
    out = capsys.readouterr().out
    assert "sk-FAKE-tracejson-123456" not in out and json.loads(out)


def test_finetune_says_when_a_finished_export_lost_manifest_lines(tmp_path, capsys):
    """A finished export whose manifest lost a line was trained on what was left without a word (``export
    validate`` calls it an error); the run says how many groups the export wrote and how many read back."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export
    from hmrcritic.alignment.finetune import FinetuneConfig, finetune

    ckpt = tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "ds"
    export(cfg_for(out, ckpt), inputs=make_inputs(3))
    lines = (out / D.MANIFEST).read_text().splitlines(keepends=True)
    (out / D.MANIFEST).write_text("".join(lines[1:]))
    finetune(FinetuneConfig(data=str(out), out=str(tmp_path / "a.pt"), model=str(ckpt), steps=1, batch_size=2,
                            num_generations=4), progress=True)
    assert "the finished export wrote 3 groups, 2 read back" in capsys.readouterr().err


def test_the_reader_refuses_another_exports_records_but_not_another_group_size(tmp_path):
    """The dataset reader refuses a record of another export (another model, judge, seed, source) as validate does,
    but a group of another size stays readable: finetune trains on the smallest G and says so (hand-made datasets
    mix sizes)."""
    import json

    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment.export import export

    out = tmp_path / "ds"
    export(cfg_for(out, tiny_model(tmp_path / "tiny.pt")), inputs=make_inputs(2))
    header = json.loads((out / D.HEADER).read_text())
    header["num_generations"] = 5
    (out / D.HEADER).write_text(json.dumps(header))
    assert len(D.GroupPreferenceDataset(out)) == 2
