"""Review s31 (lead): leftovers of earlier sessions' notes.

- ``learning-curve`` had no ``--judge`` (the Python function took one): the curve of a VLM judge could not be run
  from the command line, and an interrupted VLM curve resumed under another model mixed two models' rows.

Real CLI (``hmrcritic.cli.main``), real groups of tiny generated splits, the real agent graph and memory; the VLM
judge talks HTTP to the local OpenAI-compatible stub (tests/openai_stub_server.py, the network edge)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_stub_server import StubOpenAIServer  # noqa: E402

ENDPOINT_VARS = ("HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE", "HMRCRITIC_VLM_MODEL")


@pytest.fixture()
def data(monkeypatch, tmp_path, small_prior):
    """Tiny train (6 scenes) and test (4 scenes) splits; a VLM that is not retried or waited for long."""
    from hmrcritic.hmr.data import generate_split

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "20")
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    generate_split("train", n=6, seed=1, quiet=True)
    generate_split("test", n=4, seed=2, quiet=True)
    return tmp_path


def test_learning_curve_takes_the_judge_and_its_endpoint_flags():
    """Every command that takes ``--judge`` takes ``--base-url`` / ``--vlm-model``; learning-curve is one now."""
    import typer

    from hmrcritic.cli import app

    cmd = typer.main.get_command(app).commands["learning-curve"]
    opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
    assert {"--judge", "--base-url", "--vlm-model"} <= opts


def test_learning_curve_cli_scores_with_the_vlm_judge(data, capsys):
    """``learning-curve --judge vlm --base-url … --vlm-model m``: every held-out critique of round 0 is the VLM's
    (the stub sees model ``m`` and the group's images), and the endpoint variables are restored afterwards."""
    from hmrcritic.cli import main

    with StubOpenAIServer() as srv:
        code = main(["learning-curve", "--memory-dir", str(data / "mem"), "--rounds", "0", "--heldout-groups", "2",
                     "-n", "3", "--source", "perturbed", "--judge", "vlm", "--base-url", srv.base_url,
                     "--vlm-model", "m", "--out", str(data / "curve"), "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        chats = [r for r in srv.requests if r.path.endswith("/chat/completions")]
        assert chats and all(r.images > 0 for r in chats), [r.images for r in chats]
        assert {r.body.get("model") for r in chats} == {"m"}
        assert not srv.violations, srv.violations
    assert json.loads(captured.out)["rows"][0]["groups_scored"] == 2
    assert all(os.environ.get(k) is None for k in ENDPOINT_VARS)


def test_an_interrupted_vlm_curve_records_its_model(monkeypatch):
    """The resume check's settings carry a VLM judge's model @ endpoint (a curve resumed under another
    ``HMRCRITIC_VLM_MODEL`` is refused, naming ``judge_model``); the builtin judge's settings have no such key, so a
    builtin curve interrupted by an older release still resumes."""
    from hmrcritic.agent.learning_curve import _curve_settings

    def settings(judge):
        return _curve_settings("train", "test", 8, [], None, 16, 0, "auto", judge, {"tau": 0.5})

    monkeypatch.setenv("HMRCRITIC_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-a")
    a = settings("vlm")
    monkeypatch.setenv("HMRCRITIC_VLM_MODEL", "model-b")
    b = settings("vlm")
    assert "model-a" in a["judge_model"] and "model-b" in b["judge_model"]
    assert sorted(k for k in a if a[k] != b.get(k)) == ["judge_model"]
    assert "judge_model" not in settings("builtin")


# ---- doctor --probe: the VLM endpoint contacted on request (check_endpoint existed "for doctor", never called) ----
KEY = "sk-s31-doctor-probe-secret-0123456789"


def _doctor(args: list[str], capsys) -> tuple[int, str, str]:
    from hmrcritic.cli import main

    code = main(["doctor", "--no-render", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def no_endpoint_vars(monkeypatch):
    for name in (*ENDPOINT_VARS, "OPENAI_API_KEY", "HMRCRITIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")


def test_doctor_probe_reaches_the_endpoint_and_names_the_model(no_endpoint_vars, monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with StubOpenAIServer(model="served-vlm") as srv:
        code, out, err = _doctor(["--probe", "--base-url", srv.base_url, "--vlm-model", "served-vlm", "--json"],
                                 capsys)
        assert srv.gets and all(p.rstrip("/").endswith("/models") for p in srv.gets)
    report = json.loads(out)
    probe = [c for c in report["checks"] if c["name"] == "endpoint"]
    assert len(probe) == 1 and probe[0]["ok"], probe
    assert probe[0]["models"] == ["served-vlm"] and probe[0]["models_served"] == 1
    assert probe[0]["base_url"] == srv.base_url and probe[0]["model"] == "served-vlm"
    judge = next(c for c in report["checks"] if c["name"] == "judge")
    assert judge["settings"]["base_url"] == srv.base_url and judge["settings"]["model"] == "served-vlm"
    assert KEY not in out + err
    assert all(os.environ.get(k) is None for k in ENDPOINT_VARS)  # the flags are the command's only


def test_doctor_probe_fails_on_a_model_not_served_naming_what_is(no_endpoint_vars, monkeypatch, capsys):
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with StubOpenAIServer(model="served-vlm") as srv:
        code, out, err = _doctor(["--probe", "--base-url", srv.base_url, "--vlm-model", "other-vlm"], capsys)
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("[FAIL] endpoint"))
    assert "'other-vlm' is not served here" in line and "served-vlm" in line, line
    assert KEY not in out + err


def test_doctor_probe_of_a_refused_address_says_where(no_endpoint_vars, monkeypatch, capsys):
    import socket

    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with socket.socket() as held:  # bound, never listening: refused
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
        code, out, err = _doctor(["--probe", "--base-url", url], capsys)
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("[FAIL] endpoint"))
    assert f"cannot connect to {url}" in line, line


def test_doctor_without_probe_contacts_nothing(no_endpoint_vars, monkeypatch, capsys):
    """The flags alone set what the judge check reports; only ``--probe`` sends a request."""
    monkeypatch.setenv("HMRCRITIC_API_KEY", KEY)
    with StubOpenAIServer() as srv:
        code, out, err = _doctor(["--base-url", srv.base_url, "--json"], capsys)
        assert srv.gets == [] and srv.requests == []
    report = json.loads(out)
    assert "endpoint" not in {c["name"] for c in report["checks"]}
    assert next(c for c in report["checks"] if c["name"] == "judge")["settings"]["base_url"] == srv.base_url


# ---- one strict JSON writer (the benchmarks, learning-curve's and explore-eval's results) -------------------------
def test_strict_json_writer_writes_null_for_nan_and_inf(tmp_path):
    """``atomic_write_strict_json``: what jq and strict parsers read (NaN, ±inf and numpy NaN as null), where the lax
    ``atomic_write_json`` keeps the bare word NaN that only Python reads back."""
    import math

    from hmrcritic.io import atomic_write_json, atomic_write_strict_json

    obj = {"rho": float("nan"), "rows": [1.5, float("inf"), np.float32("nan"), {"x": -math.inf}], "n": 3}
    strict = json.loads(atomic_write_strict_json(tmp_path / "s.json", obj).read_text(), parse_constant=_refuse)
    assert strict == {"rho": None, "rows": [1.5, None, None, {"x": None}], "n": 3}
    lax = (atomic_write_json(tmp_path / "l.json", {"rho": float("nan")})).read_text()
    assert "NaN" in lax


def _refuse(token: str):
    raise ValueError(f"not strict JSON: {token}")


# ---- a judge object is known by its code, not only its name ------------------------------------------------------
def test_a_builtin_subclass_is_not_handed_the_builtin_judges_finished_critique(tmp_path, small_prior):
    """A ``BuiltinJudge`` subclass keeping ``name = "builtin"`` (DEVELOPERS' custom-judge recipe) was handed the real
    builtin judge's finished critique of the group: ``finished_earlier`` with the builtin's scores, its own code never
    run. The thread's settings digest now holds the class and a digest of its source; a plain ``BuiltinJudge()``
    object keeps the builtin's digest (its finished critique is still reused)."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.judges import BuiltinJudge
    from hmrcritic.memory.store import MemoryStore

    class FlatBuiltin(BuiltinJudge):
        def critique(self, ctx):
            out = super().critique(ctx)
            for sc in out.scores:
                sc.overall = 5.0
            return out

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    s, h, _ = make_group(7, n=5)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    kw = {"memory": memory, "config": cfg(max_reflections=0), "checkpointer": saver, "run_dir": tmp_path / "g"}
    first = critique_group(s, h, **kw)
    assert len({sc.overall for sc in first.scores}) > 1
    assert critique_group(s, h, judge=BuiltinJudge(), **kw).finished_earlier  # the builtin itself: reused
    flat = critique_group(s, h, judge=FlatBuiltin(), **kw)
    assert not flat.finished_earlier and {sc.overall for sc in flat.scores} == {5.0}


# ---- a rule new to a memory names a real measure and axis ---------------------------------------------------------
def test_a_rule_on_an_unknown_measure_or_axis_is_refused_by_add_and_import(tmp_path):
    """``RuleMemory.add`` and ``memory import`` stored a condition on a misspelt measure (it never fired) or an axis
    outside AXES (its points came off ``overall`` alone) without a word; both are InputErrors now, naming the
    nearest measure, and an import refused so imports nothing. A good rule is still added."""
    from hmrcritic.errors import InputError
    from hmrcritic.memory.schema import Rule, RuleCondition
    from hmrcritic.memory.store import MemoryStore

    mem = MemoryStore(path=tmp_path / "mem")
    mem.reset(seed_starter=False)

    def rule(measure="hyperextension_deg", axis=None, rid="user-r"):
        return Rule(rule_id=rid, text=f"{measure} above 12 takes off 2 points.", origin="user",
                    condition=RuleCondition(measure=measure, comparator=">", threshold=12.0, points=2.0, axis=axis))

    vec = np.ones((1, 384), np.float32)
    with pytest.raises(InputError, match=r"measure 'hyperextension_degs' is not an evidence measure \(did you mean "
                                         r"'hyperextension_deg'\?\)"):
        mem.rules.add([rule("hyperextension_degs")], embeddings=vec)
    with pytest.raises(InputError, match=r"axis 'motion' is not one of motion_structure"):
        mem.rules.add([rule(axis="motion")], embeddings=vec)
    assert mem.rules.count() == 0
    assert mem.rules.add([rule(axis="physical_feasibility")], embeddings=vec) == ["user-r"]
    dump = {"format": "hmrcritic-memory", "schema": 1, "prototypes": [],
            "rules": [rule(rid="user-ok").model_dump(), rule("reproj_pix", rid="user-bad").model_dump()]}
    f = tmp_path / "rules.json"
    f.write_text(json.dumps(dump), encoding="utf-8")
    before = mem.version()
    with pytest.raises(InputError, match=r"'reproj_pix' is not an evidence measure.*nothing was imported"):
        mem.import_json(f)
    assert mem.rules.count() == 1 and mem.version() == before


# ---- critique --person, as sample --person (session 31's HMR review added it to sample) ---------------------------
def test_critique_person_critiques_that_person(tmp_path, small_prior):
    """``critique --person 0`` on a file of two people critiques the faint one (the default takes the most confident),
    under a group id of ``<stem>_p0`` (and the inputs' digest); with ``--scene`` it is refused."""
    from PIL import Image
    from test_review_s31_hmr import _multi_person_files

    from hmrcritic.cli import main

    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(tmp_path / "group.png")
    kp_file = _multi_person_files(tmp_path)["plain_list"]
    out = tmp_path / "out"
    code = main(["critique", "--image", str(tmp_path / "group.png"), "--keypoints", str(kp_file), "--person", "0",
                 "-n", "3", "--no-render", "--max-reflections", "0", "--memory-dir", str(tmp_path / "mem"),
                 "--out", str(out)])
    assert code == 0
    scores = json.loads((out / "scores.json").read_text())
    assert re.fullmatch(r"group_p0-[0-9a-f]{8}", scores["group_id"]), scores["group_id"]  # + the inputs' digest
    from hmrcritic.commands import load_input_sample

    # what the CLI critiqued
    kp = load_input_sample(None, str(tmp_path / "group.png"), str(kp_file), person=0).keypoints
    assert abs(float(np.asarray(kp)[11:13, 0].mean()) - 150) < 1e-3
    assert main(["critique", "--scene", "test:0", "--person", "1", "--out", str(tmp_path / "s")]) == 2


def test_a_throwaway_critique_keeps_its_result_when_its_thread_cannot_be_deleted(tmp_path, small_prior, monkeypatch):
    """``keep=False`` deleted its checkpoint thread after the group was scored, outside any guard: a database that
    refused the delete (locked by another process past the timeout, a full disk) raised a bare
    ``sqlite3.OperationalError`` and the scored result was lost. It is returned now, with a warning naming the
    database and the thread left for ``runs prune``."""
    import sqlite3

    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory.store import MemoryStore

    memory = MemoryStore(path=tmp_path / "memory")
    memory.reset(seed_starter=True)
    s, h, _ = make_group(3, n=4)
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")

    def locked(thread_id):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(saver, "delete_thread", locked)
    with pytest.warns(UserWarning, match=r"ckpt\.sqlite.*left for `hmrcritic runs prune`"):
        res = critique_group(s, h, memory=memory, config=cfg(max_reflections=0), checkpointer=saver,
                             run_dir=tmp_path / "g", keep=False)
    assert len(res.scores) == 4


# ---- a body file that is not in metres -----------------------------------------------------------------------------
def test_a_body_file_in_millimetres_is_warned_about(tmp_path):
    """A SMPL-layout file in millimetres (the rest body 1,738 units tall) loaded and sampled without a word, its
    hypotheses' ``transl`` some 3 km from the camera (session 31's HMR review). Loading it warns, naming the height
    and the likely unit; the same file in metres loads silently."""
    import pickle
    import warnings

    from hmrcritic.hmr import body as B
    from hmrcritic.hmr import mannequin

    mannequin.ensure_mannequin()
    arrays = B.read_model_arrays(mannequin.default_folder() / mannequin.FILE_NAME)
    metres = tmp_path / "SMPL_M.pkl"
    metres.write_bytes(pickle.dumps(arrays))
    mm = dict(arrays, v_template=arrays["v_template"] * 1000, shapedirs=arrays["shapedirs"] * 1000,
              posedirs=arrays["posedirs"] * 1000)
    millimetres = tmp_path / "SMPL_MM.pkl"
    millimetres.write_bytes(pickle.dumps(mm))
    B.clear_cache()
    with pytest.warns(UserWarning, match=r"SMPL_MM\.pkl: its rest body \(betas 0\) is 1\d{3}(\.\d)? units tall.*"
                                         r"\(millimetres\?\)"):
        B.load_body_model(millimetres)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        B.load_body_model(metres)
    B.clear_cache()


# ---- evaluate of the split a model was aligned on -----------------------------------------------------------------
def test_evaluate_notes_a_model_aligned_on_the_split_it_evaluates(tmp_path, monkeypatch):
    """finetune records its dataset's split (``data_split``, session 31); an export of the test split finetuned and
    evaluated on the test split (``evaluate``'s default) gave figures of groups the model was aligned on without a
    word. ``evaluate_model`` notes it; a model aligned on another split gets no such note."""
    import torch

    from hmrcritic.hmr.diffusion import DiffusionConfig, HMRDiffusion
    from hmrcritic.hmr.evaluate import evaluate_model

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    torch.manual_seed(0)
    model = HMRDiffusion(DiffusionConfig(d_model=32, layers=1, heads=2))
    notes: dict[str, list[str]] = {}
    for aligned_on in ("test", "wild"):
        model.checkpoint_extra = {"data_split": aligned_on}
        said = notes.setdefault(aligned_on, [])
        evaluate_model(model, "test", num_generations=2, steps=2, limit=2, nn_baseline=False, notify=said.append)
    assert any("aligned on groups of the test split" in n and "not held out" in n for n in notes["test"])
    assert not any("aligned on" in n for n in notes["wild"])


def test_doctor_names_a_malformed_base_url_in_the_checks_words(no_endpoint_vars, monkeypatch, capsys):
    """After the base-URL check learnt to refuse a URL ``urlsplit`` cannot read (an unclosed IPv6 bracket, a port of
    letters), doctor's own credential stripper parsed it again and the judge line read ``ValueError: Invalid IPv6
    URL`` instead of the check's sentence."""
    for url in ("http://[::1/v1", "http://h:abc/v1"):
        monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
        code, out, _ = _doctor(["--json"], capsys)
        judge = next(c for c in json.loads(out)["checks"] if c["name"] == "judge")
        assert code == 1 and not judge["ok"], judge
        assert "ValueError" not in judge["error"] and "base URL" in judge["error"], judge["error"]


def test_the_shipped_judges_keep_their_thread_identity(monkeypatch):
    """Only judge objects of other classes get the class-and-source identity: a plain ``BuiltinJudge()`` and a plain
    ``VLMJudge`` keep the digests their finished threads were made under; a subclass of either gets its own."""
    from hmrcritic.agent.api import _custom_judge_identity
    from hmrcritic.agent.judges import BuiltinJudge
    from hmrcritic.agent.vlm import VLMJudge
    from hmrcritic.config import JudgeSettings

    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-s31-identity-0123456789")
    vlm = VLMJudge(JudgeSettings(base_url="http://127.0.0.1:9/v1", model="m"))

    class MyVLM(VLMJudge):
        pass

    class MyBuiltin(BuiltinJudge):
        pass

    assert _custom_judge_identity(BuiltinJudge()) == "" and _custom_judge_identity(vlm) == ""
    assert _custom_judge_identity(None) == "" and _custom_judge_identity("builtin") == ""
    mine = _custom_judge_identity(MyVLM(JudgeSettings(base_url="http://127.0.0.1:9/v1", model="m")))
    assert mine.startswith(f"class {__name__}.") and "MyVLM" in mine
    assert "MyBuiltin" in _custom_judge_identity(MyBuiltin())
