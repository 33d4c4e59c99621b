"""Contracts review (s22): docs/CONTRACTS.md against the code, mechanically, so the reference cannot drift silently.

tests/test_review_s17_snippets.py checks the parameter names of module-level functions and
tests/test_review_s16_docs.py the dataset.json / manifest / npz fields of a real export. What they left out, and
where the contract had drifted: methods (``MemoryStore.export_json(file)``, ``RuleMemory.search(text, ...)``,
``PrototypeMemory.query(emb, ...)`` — the code says ``path``, ``query_text``, ``embeddings``), dataclass and
pydantic constructors (``ExportConfig(...)``, ``FinetuneConfig(...)``), documented defaults
(``critique_group(..., learn=False)``: it is None), complete field lists (``GroupResult`` without ``error_type``),
the other files an export writes (failures.jsonl, pairs.jsonl), the dataset reader's items, the checkpoint's
thread records, a split's shards and manifest, and the constants the prose quotes.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "docs" / "CONTRACTS.md"


def _text() -> str:
    return CONTRACTS.read_text(encoding="utf-8")


def _flat(text: str) -> str:
    return re.sub(r"\s*\n[\s#]*", " ", text)


# ---- calls: classes, methods and defaults ---------------------------------------------------------------------

_OBJECTS: dict[str, list] | None = None


def public_objects() -> dict[str, list]:
    """name → the public module-level functions and classes of that name in the package (commands excluded)."""
    global _OBJECTS
    if _OBJECTS is None:
        import hmrcritic

        found: dict[str, list] = {}
        for info in pkgutil.walk_packages(hmrcritic.__path__, "hmrcritic."):
            if ".commands" in info.name or info.name.endswith("__main__"):
                continue
            mod = importlib.import_module(info.name)
            for name, obj in vars(mod).items():
                if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                        and getattr(obj, "__module__", "") == info.name):
                    found.setdefault(name, []).append(obj)
        _OBJECTS = found
    return _OBJECTS


def _unique(name: str, module: str = ""):
    """The one public object of that name — or, of several, the one in ``module`` (the section's)."""
    objs = public_objects().get(name, [])
    if len(objs) > 1 and module:
        objs = [o for o in objs if o.__module__ == module]
    return objs[0] if len(objs) == 1 else None


def _sections(text: str) -> list[tuple[str, str]]:
    """``(module, text)`` per ``## hmr/diffusion.py`` section (module "" where the heading names none)."""
    out = []
    for part in re.split(r"^## ", text, flags=re.M):
        m = re.match(r"(\w+/\w+)\.py", part)
        out.append(("hmrcritic." + m.group(1).replace("/", ".") if m else "", part))
    return out


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


def _split_top(args: str) -> list[str]:
    """``args`` split at the commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in args:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def _strip_nested(s: str) -> str:
    for _ in range(5):
        s = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", s)
    return s


def doc_params(args: str) -> list[str]:
    """The parameter / field names of a documented list: shapes, types and defaults dropped; ``a/b/c (labels)``
    is three; alternatives of bare names stay one entry ``"a|b"`` (``memory|path|None`` is one parameter
    of two kinds, ``split | data`` two fields of which one is given: see :func:`_alternatives`)."""
    out = []
    for part in re.split(r"[,;]", _strip_nested(args)):
        if re.fullmatch(r"\s*\w+(?:\s*\|\s*\w+)+\s*", part):
            out.append("|".join(w for w in re.findall(r"\w+", part) if w != "None"))
            continue
        m = re.match(r"\s*\**([A-Za-z_]\w*(?:/[A-Za-z_]\w*)*)\s*(?:[=:|>]|\s|$)", part)
        if m:
            out += m.group(1).split("/")
    return out


def doc_defaults(args: str) -> dict[str, object]:
    """``name=literal`` of a documented argument list (a default that is no Python literal — ``None→T/2``,
    ``"builtin"|Judge``, ``...`` — is not compared)."""
    found = {}
    for part in _split_top(args):
        m = re.match(r"\s*([A-Za-z_]\w*)\s*(?::[^=]*)?=\s*(.+?)\s*$", part)
        if not m:
            continue
        try:
            value = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if value is not Ellipsis:
            found[m.group(1)] = value
    return found


def documented_calls(text: str):
    """``(label, object, args)`` for every ``name(args)`` of the code in ``text`` (```python blocks and inline
    spans) that names one public function or class, or a method of the class the line (or the indented block
    under ``class X`` / ``X:`` / ``X(``) is about."""
    spans = []
    for module, section in _sections(text):
        spans += [(module, s) for s in re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)]
        spans += [(module, s) for s in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", section, flags=re.S))]
    for module, span in spans:
        owner, offset = None, 0
        for line in span.splitlines(True):
            head = re.match(r"(?:@dataclass\s+)?class\s+(\w+)", line) or re.match(r"([A-Z]\w*)\s*[:(]", line)
            if head and inspect.isclass(_unique(head.group(1))):
                owner = _unique(head.group(1))
            elif line.strip() and not line[0].isspace():
                owner = None
            for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\(", line):
                if re.search(r"\bclass$", line[:m.start()].rstrip()):  # "class X(Base)": base classes
                    continue
                args = _balanced(span, offset + m.end() - 1)
                name = m.group(1)
                if args is None:
                    continue
                if owner is not None and name != owner.__name__ and name in vars(owner) and (
                        line[0].isspace() or line.lstrip().startswith(owner.__name__)):
                    yield f"{owner.__name__}.{name}", getattr(owner, name), args
                elif (obj := _unique(name, module)) is not None:
                    yield name, obj, args
            offset += len(line)


def call_problems(text: str) -> list[str]:
    """Every documented call naming a parameter the code lacks, or a literal default the code does not have."""
    problems = []
    for label, obj, args in documented_calls(text):
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        documented = doc_params(args)
        if documented[:1] == ["self"] and "." not in label:  # "class Judge(Protocol): def critique(self, ctx)"
            continue
        if inspect.isclass(obj) and re.fullmatch(r"\s*[A-Z]\w*\s*", args):  # "EndpointUnusableError(JudgeError)"
            continue
        bad = [p for p in documented if p != "self" and not set(p.split("|")) & set(params)]
        if bad:
            problems.append(f"{label}({args.strip()[:60]}): no parameter {bad}; it has {list(params)}")
        for name, value in doc_defaults(args).items():
            p = params.get(name)
            if p is not None and p.default is not p.empty and not (p.default == value
                                                                   and type(p.default) is type(value)):
                if isinstance(value, int | float) and not isinstance(value, bool) and p.default == value:
                    continue  # 1e-4 vs 0.0001, 100 vs 100.0
                problems.append(f"{label}: {name}={value!r} in the contract, {p.default!r} in the code")
    return problems


def test_contract_calls_name_real_parameters_and_defaults():
    """Methods, constructors and defaults too: ``export_json(file)``, ``search(text, k=10)``, ``get(ids)``,
    ``query(emb, ...)``, ``advantages_match(record)`` and ``critique_group(..., learn=False)`` were wrong."""
    problems = call_problems(_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("right", "wrong"), [
    ("    search(query_text, k=10, include_retired=False)", "    search(text, k=10)"),  # a method's parameter
    ("ema=0.999, grad_clip=1.0", "ema=0.99, grad_clip=1.0"),  # a dataclass default
    ("num_generations=20, judge=\"builtin\", workers=1,", "num_generations=20, judge=\"builtin\", workers=2,"),
    ("def sample(model, cond, num_generations=16, steps=10", "def sample(model, cond, num_generations=16, steps=20"),
    ("def retrieve(self, query_tags: list[str], k=8,", "def retrieve(self, query_tags: list[str], k=16,"),
    ("GroupResult(group_id, result | None", "GroupResult(group_key, result | None"),
])
def test_the_call_check_catches_a_wrong_contract(right, wrong):
    text = _text()
    assert right in text
    assert call_problems(text.replace(right, wrong, 1))


# ---- complete field lists ----------------------------------------------------------------------------------------

def _alternatives(names: list[str]) -> set[str]:
    return {n for name in names for n in name.split("|")}


def _fields(cls) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(cls.model_fields)


def _after(text: str, start: str, stop: str) -> str:
    i = text.index(start) + len(start)
    return text[i:text.index(stop, i)]


def contract_field_lists(text: str) -> dict[str, set[str]]:
    """class name → the fields CONTRACTS.md lists for it where it lists them all."""
    flat = _flat(text)

    def call(name: str) -> set[str]:
        i = flat.index(f"{name}(")
        return _alternatives(doc_params(_balanced(flat, i + len(name)).split(";")[0]))

    out = {name: call(name) for name in (
        "ExportConfig", "FinetuneConfig", "ObjectiveConfig", "ValidationReport", "ScoreCalibration", "GroupResult",
        "LabelledGroup", "ReflectionIssue", "MaintenancePlan", "ObjectiveOutput", "BatchGroup", "ExploreSummary")}
    for name, stop in (("BodyOutput", "#"), ("HypothesisGroup", "\n"), ("MetricResult", "\n"), ("Sample", "\nclass")):
        out[name] = _alternatives(doc_params(_after(text, f"@dataclass class {name}:", stop)))
    out["AgentConfig"] = _alternatives(doc_params(_after(flat, "`AgentConfig` (", "; env")))
    out["ScoredGroup"] = _alternatives(doc_params(re.search(r"-> ScoredGroup` \((group_id, .*?); `\.overall`",
                                                           flat).group(1)))
    return out


def test_contract_field_lists_are_the_code_fields():
    """Where the contract lists a class's fields, it lists exactly the code's: ``GroupResult`` lacked
    ``error_type`` (which critique_groups sets, and which the same paragraph quotes), ``HypothesisGroup`` its
    ``extra``, ``LabelledGroup`` ``source`` / ``extra``, ``BatchGroup`` ``rules_text``."""
    from hmrcritic.agent import api, groups, judges, mining, state
    from hmrcritic.agent.explore import ExploreSummary
    from hmrcritic.alignment import dataset, export, finetune, objectives
    from hmrcritic.hmr import body, data, diffusion, metrics
    from hmrcritic.memory import maintenance, schema

    classes = {
        "ExportConfig": export.ExportConfig, "FinetuneConfig": finetune.FinetuneConfig,
        "ObjectiveConfig": objectives.ObjectiveConfig, "ValidationReport": dataset.ValidationReport,
        "ScoreCalibration": schema.ScoreCalibration, "GroupResult": api.GroupResult,
        "LabelledGroup": groups.LabelledGroup, "ReflectionIssue": judges.ReflectionIssue,
        "MaintenancePlan": maintenance.MaintenancePlan, "ObjectiveOutput": objectives.ObjectiveOutput,
        "BatchGroup": mining.BatchGroup, "ExploreSummary": ExploreSummary, "BodyOutput": body.BodyOutput,
        "HypothesisGroup": diffusion.HypothesisGroup, "MetricResult": metrics.MetricResult, "Sample": data.Sample,
        "AgentConfig": state.AgentConfig, "ScoredGroup": api.ScoredGroup,
    }
    documented = contract_field_lists(_text())
    assert set(documented) == set(classes)
    problems = [f"{name}: contract {sorted(documented[name])}, code {sorted(_fields(cls))}"
                for name, cls in classes.items() if documented[name] != _fields(cls)]
    assert not problems, "\n".join(problems)
    # the parse is what it claims: one field more in the code is a difference
    assert contract_field_lists(_text().replace(", error | None, error_type | None)", ", error | None)"))[
        "GroupResult"] != _fields(api.GroupResult)


# ---- constants the prose quotes ----------------------------------------------------------------------------------

def test_contract_constants_are_the_code_values():
    from hmrcritic import memory
    from hmrcritic.agent import api, graph, learning_curve, vlm
    from hmrcritic.alignment import dataset, export
    from hmrcritic.hmr import body, data, diffusion, poses
    from hmrcritic.memory import schema, store

    flat = _flat(_text())
    quoted = [
        f"MAX_SCENES = {data.MAX_SCENES:,}",
        f"MAX_GENERATIONS = {diffusion.MAX_GENERATIONS}",
        f"POSE_DIM = {memory.POSE_DIM}",
        f"TEXT_DIM = {memory.TEXT_DIM}",
        f"GRADED_CAP = {schema.GRADED_CAP:g}",
        f"LOCK_NOTE_AFTER_S ({store.LOCK_NOTE_AFTER_S:g} s)",
        f"CHECKPOINT_TIMEOUT_S` ({graph.CHECKPOINT_TIMEOUT_S:g} s)",
        f"FORMAT_VERSION = {dataset.FORMAT_VERSION}",
        f"<memory>/{store.OPEN_LOCK_NAME} (OPEN_LOCK_NAME)",
        "VARIANTS = (" + ", ".join(learning_curve.VARIANTS) + ")",
        "POSE_CATEGORIES = (" + ", ".join(f'"{c}"' for c in poses.POSE_CATEGORIES) + ")",
        "JOINT_SETS = {" + ", ".join(f'"{k}"' for k in body.JOINT_SETS) + "}",
        f"after {export.UNUSABLE_IN_A_ROW} such groups in a row the export stops",
        f"stops after {vlm.UNUSABLE_IN_A_ROW} of them in a row",
        f"after {api.UNUSABLE_IN_A_ROW} groups in a row failed with `EndpointUnusableError`",
    ]
    flat_code = flat.replace('"smpl24": list(range(24)), "lsp14": [...]', '"smpl24", "lsp14"')
    missing = [q for q in quoted if q not in flat_code]
    assert not missing, missing
    presets = re.search(r"PRESETS \(([^)]*)\)", flat).group(1)
    assert set(re.findall(r'"(\w+)"', presets)) == set(data.PRESETS) == set(data.SPLITS) | {"clean"}
    assert diffusion.HMRDiffusion.X_DIM == 24 * 6 + 10 and "X_DIM = 24*6 + 10" in flat
    # the memory-folder sidecars and the records an export carries
    for name in store.EXPLORE_FILES:
        assert name in _after(flat, "memory.store.EXPLORE_FILES):", "— a memory reset"), name
    assert set(store.EXPORTED_FILES) == {"explored_on", "explore_progress"}
    assert "the export also carries explored_on" in flat and "explore_progress (taken only" in flat
    assert (set(dataset.COND_KEYS), set(dataset.HYP_KEYS)) == (
        set(doc_params(_after(flat, "groups/<id>.cond.npz {", "}").replace("px+conf", ""))),
        set(doc_params(_after(flat, "groups/<id>.hyps.npz {", "}"))))


def test_contract_environment_variables_are_read_by_the_code():
    """Every ``HMRCRITIC_*`` variable CONTRACTS.md names is one the package reads, and AgentConfig's fallbacks are
    ``HMRCRITIC_<FIELD>`` for every field but the ones the contract excepts."""
    from hmrcritic.agent.state import AgentConfig

    source = "\n".join(f.read_text(encoding="utf-8") for f in (ROOT / "hmrcritic").rglob("*.py"))
    named = set(re.findall(r"HMRCRITIC_[A-Z][A-Z0-9_]*[A-Z0-9]", _text()))
    assert named and not {v for v in named if f'"{v}"' not in source}
    state = (ROOT / "hmrcritic" / "agent" / "state.py").read_text(encoding="utf-8")
    without = {f for f in AgentConfig.model_fields if f'"HMRCRITIC_{f.upper()}"' not in state}
    assert without == {"memory_dir", "chroma_url", "settle_with_labels", "success_tau"}
    assert '"HMRCRITIC_MEMORY"' in state and "HMRCRITIC_CHROMA_URL" in source  # chroma_url: config.env_chroma_url


# ---- what an export, the dataset reader and finetune write ---------------------------------------------------------

def _braced(flat: str, start: str) -> set[str]:
    return set(doc_params(_after(flat, start, "}").replace("[,", ",").replace("]", "")))


def test_export_failures_pairs_items_and_checkpoint_threads_are_the_contracts(tmp_path, monkeypatch):
    """failures.jsonl's record (and its stages), pairs.jsonl's record, the dataset reader's item and the
    finetuned checkpoint's thread records: CONTRACTS.md names them; a real tiny export with one failing group
    and a one-step finetune write exactly those."""
    from test_export import cfg_for, make_inputs, tiny_model

    from hmrcritic.alignment import dataset as D
    from hmrcritic.alignment import export as E
    from hmrcritic.alignment.finetune import FinetuneConfig, finetune
    from hmrcritic.hmr.diffusion import read_checkpoint

    flat = _flat(_text())
    failure_keys = _braced(flat, "failures.jsonl (one record per group that failed and is not in the dataset: "
                                 "its latest failure, in input order; {")
    stages = set(re.search(r"stage: ([\w|]+)", _after(flat, "in input order; {", "}")).group(1).split("|"))
    pair_keys = _braced(flat, "pairs.jsonl ({")
    item_keys = set(doc_params(_after(flat, "item = dict(", "AssetError on any label key").rsplit(")", 1)[0]))

    # every stage the export writes is documented, and every documented one is written somewhere
    source = Path(E.__file__).read_text(encoding="utf-8")
    assert set(re.findall(r'"stage": "(\w+)"', source)) == stages
    assert "stage" in failure_keys and "endpoint_unusable" in failure_keys and '"endpoint_unusable"' in source

    monkeypatch.setenv("HMRCRITIC_TEST_FAIL_IDS", "img001")
    model = tiny_model(tmp_path / "tiny.pt")
    out = tmp_path / "ds"
    E.export(cfg_for(out, model), inputs=make_inputs(3))
    fails = [json.loads(line) for line in (out / D.FAILURES).read_text().splitlines()]
    assert len(fails) == 1 and set(fails[0]) == failure_keys - {"endpoint_unusable"}
    assert fails[0]["stage"] in stages
    pairs = [json.loads(line) for line in (out / D.PAIRS).read_text().splitlines()]
    assert pairs and all(set(p) == pair_keys for p in pairs)
    item = D.GroupPreferenceDataset(out)[0]
    assert set(item) == item_keys
    ckpt = finetune(FinetuneConfig(data=str(out), out=str(tmp_path / "ft.pt"), model=str(model), num_generations=4,
                                   steps=1, batch_size=2, checkpoint_every=1, threads=1))
    extra = read_checkpoint(ckpt)["extra"]
    assert "`torch_threads`" in flat and "`torch_threads_used`" in flat
    assert extra["torch_threads"] == 1 and extra["torch_threads_used"] == [1]


def test_memory_export_file_and_counts_are_the_contracts(tmp_path):
    """The memory export's JSON file (its optional records too), export_json's return and import_json's counts
    are the keys CONTRACTS.md lists."""
    from hmrcritic.memory import MemoryStore
    from hmrcritic.memory import store as S

    flat = _flat(_text())
    block = _after(flat, "the file: {", "}; export_json returns")
    required, optional = block.split("[", 1)
    returned = set(doc_params(_after(flat, "export_json returns {", "}")))
    counts = set(doc_params(_after(flat, "; import_json {", "}")))
    assert set(doc_params(optional.replace("]", ""))) == {"calibration"} | set(S.EXPORTED_FILES)
    with MemoryStore(tmp_path / "a", chroma_url="") as a:
        ret = a.export_json(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert set(data) == set(doc_params(required))
    assert (data["format"], data["schema"]) == (S.EXPORT_FORMAT, S.SCHEMA_VERSION)
    assert f'format: "{S.EXPORT_FORMAT}", schema: {S.SCHEMA_VERSION}' in block
    assert set(ret) == returned
    with MemoryStore(tmp_path / "b", chroma_url="") as b:
        assert set(b.import_json(tmp_path / "m.json")) == counts


# ---- a split's files ------------------------------------------------------------------------------------------

def test_split_shards_labels_and_manifest_are_the_contracts(tmp_path):
    """The shard arrays, wild's condition-only shards and labels_eval.npz, and manifest.json's keys CONTRACTS.md
    lists are what ``generate_split`` writes."""
    from hmrcritic.hmr.data import generate_split

    flat = _flat(_text())
    shard = set(re.findall(r"`(\w+) \(n[,)]", _after(flat, "Shard arrays:", "; manifest.json")))
    shard |= set(re.findall(r"`(\w+) \(n[,)]", _after(flat, "shards also hold", "(noise-free")))
    condition = {"keypoints", "smpl24_keypoints", "K", "image_size"}
    wild_labels = set(doc_params(_after(flat, "its labels (`", "`) are in")))
    manifest = set(doc_params(_after(flat, "manifest.json:", " — a split whose body")
                              .replace("generator version", "generator_version").replace(" and ", ", ")))

    test = generate_split("test", out_dir=tmp_path / "test", n=3, quiet=True)
    wild = generate_split("wild", out_dir=tmp_path / "wild", n=3, quiet=True)
    assert set(np.load(test / "shard_00000.npz").files) == shard
    assert set(np.load(wild / "shard_00000.npz").files) == condition | {"sample_id"}
    assert set(np.load(wild / "labels_eval.npz").files) == wild_labels | {"sample_id"}
    assert condition | wild_labels | {"sample_id"} == shard
    written = json.loads((test / "manifest.json").read_text())
    assert manifest <= set(written), manifest - set(written)
    assert written["body_sha256"] is None  # the mannequin


# ---- a promise the code broke (reported by the contracts review, mended in memory/store.py reset()) -----------

def test_an_on_disk_memory_resets_whatever_hmrcritic_chroma_url_says(tmp_path, monkeypatch):
    """CONTRACTS.md: ``MemoryStore(path, chroma_url="")`` is the memory on disk at path whatever
    HMRCRITIC_CHROMA_URL says (the commands' private memories: the demo resets its own). With the variable set
    and the folder holding exploration records (a second ``hmrcritic demo`` into one folder), ``reset()`` was
    refused as a *server* reset that would delete the on-disk memory's records: "give the server memory a folder
    of its own"."""
    from hmrcritic.memory import MemoryStore

    folder = tmp_path / "mem"
    with MemoryStore(folder, chroma_url="") as m:
        m.stats()
    (folder / "explored_on.json").write_text('{"splits": {}}', encoding="utf-8")
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://127.0.0.1:9")
    with MemoryStore(folder, chroma_url="") as m:
        m.reset()
    assert not (folder / "explored_on.json").exists()
