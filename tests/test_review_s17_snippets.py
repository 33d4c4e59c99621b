"""Docs review (s17, snippets): the runnable examples of README.md and docs/*.md run and do what the text says.

tests/test_review_s16_docs.py checks that every ``hmrcritic …`` command line names real commands and flags; this
file runs the *Python* examples and the recipes a reader copies: the README's Python API block (in a fresh home,
as a reader would), the API it introduces chained the way the README's prose describes it (sample → critique, the
group-id rules), the VLM recipe against the local OpenAI-compatible stub, and the signatures docs/CONTRACTS.md
promises against the code (a wrong parameter name breaks every keyword call a reader copies from it).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "DEVELOPERS.md", "docs/CONTRACTS.md", "docs/DESIGN.md", "docs/REPRODUCE.md"]

pytestmark = pytest.mark.usefixtures("small_prior")


def _read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a ``#…`` line) up to the next heading of any level."""
    m = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, flags=re.S | re.M)
    assert m, f"no section {heading!r}"
    return m.group(1)


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


# ---- the README's Python API block ---------------------------------------------------------------------------

def readme_python_blocks() -> list[str]:
    return [b for rel in DOCS if rel != "docs/CONTRACTS.md" for b in _blocks(_read(rel), "python")]


def test_the_docs_have_runnable_python_blocks():
    """CONTRACTS.md's ```python blocks are signature listings (checked below); every other ```python block of the
    docs is runnable and is run by the next test. Today that is the README's Python API block."""
    assert any("from hmrcritic.hmr.body import load_body_model" in b for b in readme_python_blocks())


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_docs_python_block_runs_in_a_fresh_home(index, tmp_path):
    """Run each block as a reader would (a fresh interpreter, an empty HMRCRITIC_HOME, an empty working folder).
    A block that only imports must leave both empty — README: "Importing any of these writes no file and opens no
    connection"."""
    block = readme_python_blocks()[index]
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {**os.environ, "HMRCRITIC_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, "-c", block + "\nprint('ran to the end')\n"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ran to the end" in res.stdout
    imports_only = all(not ln.strip() or ln.lstrip().startswith(("from ", "import ", "#"))
                       for ln in block.splitlines())
    if imports_only:
        assert list(home.rglob("*")) == [] and list(cwd.rglob("*")) == []


def test_readme_python_api_names_are_documented_in_contracts():
    """Every name the README's API block imports is in docs/CONTRACTS.md (the module contracts it links to)."""
    (block,) = [b for b in readme_python_blocks() if "load_body_model" in b]
    contracts = _read("docs/CONTRACTS.md")
    names = [n.strip() for line in block.splitlines() if line.startswith("from ")
             for n in line.split(" import ", 1)[1].split("#")[0].split(",")]
    assert len(names) >= 10
    missing = [n for n in names if not re.search(rf"\b{re.escape(n)}\b", contracts)]
    assert not missing, missing


def test_readme_python_api_walkthrough_sample_critique_and_group_ids(tmp_path, monkeypatch):
    """The README's Python API section, chained as its prose describes: sample a group with the imported
    functions (shapes as CONTRACTS.md says), critique it (thread = the sample's id; for ``sample_from_user`` the
    image's file stem), other hypotheses of the same input are refused naming ``group_id=`` / ``fresh=True``, the
    same ones get the stored result."""
    import numpy as np
    import torch
    from PIL import Image

    from hmrcritic.agent.api import critique_group
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.data import load_split, sample_from_user
    from hmrcritic.hmr.diffusion import condition_from_keypoints, load_model, sample

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))  # its own threads: ids are the sample ids
    model = load_model()
    s = load_split("test", quiet=True)[0]
    kp = torch.as_tensor(s.keypoints, dtype=torch.float32)[None]
    K = torch.as_tensor(s.K, dtype=torch.float32)[None]
    cond = condition_from_keypoints(kp, K, s.image_size)

    def group(seed):
        return sample(model, cond, num_generations=4, K=K, keypoints=kp, generator=torch.Generator().manual_seed(seed))

    g = group(0)
    assert {k: tuple(getattr(g, k).shape) for k in ("global_orient", "body_pose", "betas", "transl", "x0")} == {
        "global_orient": (1, 4, 3), "body_pose": (1, 4, 69), "betas": (1, 4, 10), "transl": (1, 4, 3),
        "x0": (1, 4, 154)}
    cfg = {"render": False}
    r = critique_group(s, g, config=cfg)
    assert r.group_id == s.sample_id and len(r.overall) == 4 and sorted(r.ranking) == [0, 1, 2, 3]
    assert Path(r.run_dir).parent == tmp_path / "runs" / "groups"
    assert all(0 <= o <= 10 for o in r.overall)
    with pytest.raises(InputError, match=r"group_id=.*fresh=True"):
        critique_group(s, group(1), config=cfg)
    assert critique_group(s, g, config=cfg).finished_earlier

    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(tmp_path / "person.png")
    (tmp_path / "person.json").write_text(json.dumps(s.keypoints.tolist()))
    u = sample_from_user(tmp_path / "person.png", tmp_path / "person.json")
    ku = torch.as_tensor(u.keypoints, dtype=torch.float32)[None]
    Ku = torch.as_tensor(u.K, dtype=torch.float32)[None]
    gu = sample(model, condition_from_keypoints(ku, Ku, u.image_size), num_generations=3, K=Ku, keypoints=ku)
    assert critique_group(u, gu, config=cfg).group_id == "person"


# ---- the VLM recipe (README "The VLM judge") -----------------------------------------------------------------

def test_readme_vlm_recipe_runs_against_a_local_openai_compatible_server(tmp_path, monkeypatch, capsys):
    """The README's bash block, verbatim but for the server's port (the stub stands in for vLLM) and the output
    folder: the exported variables are the ones the judge reads, and the command scores the whole group."""
    from openai_stub_server import StubOpenAIServer

    from hmrcritic.cli import main

    (block,) = _blocks(_section(_read("README.md"), "The VLM judge"), "bash")
    lines = [ln for ln in block.splitlines() if ln.strip()]
    exports = [ln for ln in lines if ln.startswith("export ")]
    (command,) = [ln for ln in lines if ln.startswith("hmrcritic ")]
    assert len(exports) == 1
    with StubOpenAIServer() as server:
        for item in shlex.split(exports[0])[1:]:
            key, value = item.split("=", 1)
            if key == "HMRCRITIC_BASE_URL":
                assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", value), value  # vLLM's default form
                value = server.base_url
            monkeypatch.setenv(key, value)
        for key in ("OPENAI_API_KEY", "HMRCRITIC_API_KEY", "OPENAI_BASE_URL"):  # a local server needs no key
            monkeypatch.delenv(key, raising=False)
        argv = shlex.split(command)[1:]
        argv[argv.index("--out") + 1] = str(tmp_path / "critique")
        assert main(argv) == 0, capsys.readouterr()
        models = {r.body.get("model") for r in server.requests}
        assert not server.violations, server.violations
    scores = json.loads((tmp_path / "critique" / "scores.json").read_text())
    n = int(argv[argv.index("-n") + 1])
    assert scores["judge"] == "vlm" and len(scores["scores"]) == n
    assert models == {os.environ["HMRCRITIC_VLM_MODEL"]}
    assert (tmp_path / "critique" / "report.html").exists()


# ---- docs/CONTRACTS.md signatures against the code -----------------------------------------------------------

_FUNCTIONS: dict[str, list] | None = None


def public_functions() -> dict[str, list]:
    """name → the module-level public functions of that name in the package (commands excluded)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        import hmrcritic

        found: dict[str, list] = {}
        for info in pkgutil.walk_packages(hmrcritic.__path__, "hmrcritic."):
            if ".commands" in info.name or info.name.endswith("__main__"):
                continue
            mod = importlib.import_module(info.name)
            for name, obj in vars(mod).items():
                if (not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == info.name):
                    found.setdefault(name, []).append(obj)
        _FUNCTIONS = found
    return _FUNCTIONS


def _balanced(text: str, open_at: int) -> str | None:
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] in "([":
            depth += 1
        elif text[j] in ")]":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:j]
    return None


def _doc_params(args: str) -> list[str]:
    """The parameter names of a documented argument list: shapes ``(B,N,3)``, types ``[...]`` and defaults
    dropped; ``name: type``, ``name=default``, ``name (shape)`` and ``*`` / ``...`` forms understood."""
    s = args
    for _ in range(5):
        s = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", s)
    out = []
    for part in s.split(","):
        m = re.match(r"\s*\**([A-Za-z_]\w*)\s*(?:[=:|]|\s|$)", part)
        if m:
            out.append(m.group(1))
    return out


def signature_problems(text: str) -> list[str]:
    """Every ``name(params)`` in the code of ``text`` (fenced blocks and inline spans) where ``name`` is one
    public module-level function of the package and a documented parameter is not one of its parameters."""
    funcs = public_functions()
    spans = _blocks(text, r"[a-z]*")
    spans += re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    problems = []
    for span in spans:
        for m in re.finditer(r"(?<![\w.])([a-z_]\w*)\(", span):
            objs = funcs.get(m.group(1))
            args = _balanced(span, m.end() - 1)
            if not objs or len(objs) != 1 or args is None:
                continue
            params = inspect.signature(objs[0]).parameters
            if any(p.kind == p.VAR_KEYWORD for p in params.values()):
                continue
            documented = _doc_params(args)
            if documented[:1] == ["self"]:  # a method listed under its class, not this function
                continue
            bad = [p for p in documented if p not in params]
            if bad:
                problems.append(f"{m.group(1)}({args.strip()[:60]}): no parameter {bad}; it has {list(params)}")
    return problems


def test_contracts_signatures_name_the_real_parameters():
    """A contract's ``def finetune(cfg, ...)`` made ``finetune(cfg=...)`` a TypeError (it is ``config``); the
    same for ``default_intrinsics(W, H)``, ``validate_dataset(dir)``, ``calibrate_memory(..., labelled_groups)``."""
    problems = [f"{rel}: {p}" for rel in DOCS for p in signature_problems(_read(rel))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("wrong", [
    "def finetune(cfg, progress=False) -> Path",
    "def default_intrinsics(W, H, focal=None) -> Tensor (3,3)",
    "`validate_dataset(dir)`",
])
def test_the_signature_check_catches_a_wrong_parameter(wrong):
    assert signature_problems("```python\n" + wrong + "\n```" if wrong.startswith("def") else wrong)
    assert not signature_problems(wrong.replace("cfg", "config").replace("W, H", "width, height")
                                  .replace("dir", "root"))


# ---- the README command table as one walk-through: each step reads what the one before wrote ------------------

def test_readme_walkthrough_sample_critique_export_finetune_evaluate(tmp_path, capsys, monkeypatch):
    """README "Command line", small sizes: ``sample`` writes the ``hypotheses.npz`` that ``critique
    --hypotheses`` reads (ranked table, ``scores.json``, report), ``export`` writes the folder ``export validate``
    and ``finetune --data`` read, ``finetune --out CKPT`` writes the checkpoint (+ ``CKPT.state.pt``,
    ``CKPT.log.jsonl``) that ``evaluate --model`` reads; re-running the export resumes (nothing new)."""
    from hmrcritic.cli import main

    def run(*argv):
        rc = main([str(a) for a in argv])
        text = capsys.readouterr()
        assert rc == 0, (argv, text.out[-2000:], text.err[-2000:])
        return text.out

    d = tmp_path
    monkeypatch.setenv("HMRCRITIC_RUNS", str(d / "runs"))
    run("sample", "--scene", "test:3", "-n", 4, "--no-render", "--out", d / "sample")
    assert (d / "sample" / "hypotheses.npz").exists()
    out = run("critique", "--scene", "test:3", "--hypotheses", d / "sample" / "hypotheses.npz", "--no-render",
              "--out", d / "critique")
    assert "rank" in out and len(json.loads((d / "critique" / "scores.json").read_text())["scores"]) == 4
    assert (d / "critique" / "report.html").exists()
    run("export", "--split", "wild", "-n", 4, "--limit", 2, "--out", d / "ds")
    assert "OK" in run("export", "validate", d / "ds")
    assert "new 0, already done 2" in run("export", "--split", "wild", "-n", 4, "--limit", 2, "--out", d / "ds")
    run("finetune", "--data", d / "ds", "--objective", "gpa", "-n", 4, "--steps", 2, "--batch-size", 2,
        "--out", d / "gpa.pt")
    assert all((d / name).exists() for name in ("gpa.pt", "gpa.pt.state.pt", "gpa.pt.log.jsonl"))
    res = json.loads(run("evaluate", "--model", d / "gpa.pt", "--split", "test", "-n", 2, "--limit", 2, "--no-nn",
                         "--json"))
    assert res["n_samples"] == 2 and res["unit"].startswith("mm") and res["pa_mpjpe_mean_mm"] > 0
