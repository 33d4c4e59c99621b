"""Session 21: a command's private memory stays on disk when ``HMRCRITIC_CHROMA_URL`` names a shared server.

``MemoryStore(path)`` reads that variable (the documented way to share one memory among workers), so every
memory a command keeps for itself went to the server instead: the frozen snapshot it scores with, and
``reproduce``'s scratch memory, whose fresh start reset — wiped — the server's shared memory. ``chroma_url=""``
keeps a store on disk; the private memories use it. A server address nobody answers on shows where a store
went: reaching for it fails. (Also: an import's rule vectors from another text embedding, a gap the session-21
mutation round found.)"""

from __future__ import annotations

import pytest

from hmrcritic.memory.store import MemoryStore

NOBODY = "http://127.0.0.1:9"  # the discard port: nothing answers


def test_an_empty_chroma_url_keeps_the_memory_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", NOBODY)
    store = MemoryStore(tmp_path / "m", chroma_url="")
    stats = store.stats()
    assert store.chroma_url is None and stats["backend"] != "http" and stats["rules"] > 0


def test_the_frozen_copy_of_a_memory_on_disk_is_read_on_disk(tmp_path, monkeypatch):
    """``frozen_copy`` copies the folder, then opened the copy as ``MemoryStore(dst)``: the server's memory (or,
    unreachable, an error) — scoring "from the frozen snapshot" read another memory."""
    from hmrcritic.agent.explore import frozen_copy

    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    source = MemoryStore(tmp_path / "m")
    version = source.version()
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", NOBODY)
    snap = frozen_copy(source, root=tmp_path / "frozen")
    assert snap.chroma_url is None and snap.path.parent == (tmp_path / "frozen").resolve()
    assert snap.version() == version


def test_reproduce_resets_its_own_scratch_memory_not_the_server(tmp_path, monkeypatch):
    """``reproduce`` starts its scratch memory afresh; with the variable set that reset went to the server every
    worker shares."""
    from hmrcritic.alignment.reproduce import _explore, _Log, make_preset

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", NOBODY)
    out = tmp_path / "run"
    out.mkdir()
    summary = _explore(make_preset("quick", {"explore_rounds": "0"}), out / "memory", None, "k", _Log(out, False))
    assert summary["stats"]["rules"] > 0 and summary["stats"]["backend"] != "http"


def test_an_import_from_another_text_embedding_recomputes_the_rule_vectors(tmp_path, monkeypatch):
    """``memory import`` reuses a file's rule vectors only when the file says they come from this text embedding;
    from another one (another model, another width) they are recomputed from the rule text — reusing them put
    vectors of another space beside ours, and recall ranked those rules by noise."""
    import json

    import numpy as np

    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    source = MemoryStore(tmp_path / "a")
    dump = tmp_path / "a.json"
    source.export_json(dump)
    data = json.loads(dump.read_text())
    rule = data["rules"][0]
    original = np.asarray(rule["embedding"], dtype=np.float32)  # its text, embedded by this memory's model
    width = len(rule["embedding"])
    rule["rule_id"] = "from-another-embedder"
    rule["embedding"] = [1.0] + [0.0] * (width - 1)  # a vector no text embeds to
    data["rules"] = [rule]
    data["embeddings"]["semantic_rules"]["id"] = "some-other-text-model"
    dump.write_text(json.dumps(data))
    target = MemoryStore(tmp_path / "b")
    target.import_json(dump)
    stored = target.rules.embeddings(["from-another-embedder"])["from-another-embedder"]
    assert not np.allclose(stored, rule["embedding"])
    np.testing.assert_allclose(stored, original, atol=1e-5)


def test_the_starter_memory_baseline_is_made_on_disk(tmp_path, monkeypatch):
    """``no_reflection``'s starter memory (explore-eval, learning-curve) was created on the server the variable
    names — seeding starter rules into the shared memory — or failed to reach it."""
    from hmrcritic.agent.learning_curve import starter_memory

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", NOBODY)
    store = starter_memory(tmp_path / "starter")
    assert store.chroma_url is None and store.read_only and store.stats()["rules"] > 0


@pytest.mark.slow
def test_evaluate_critic_explores_its_own_memory_on_disk(tmp_path, monkeypatch, capsys, small_prior):
    """evaluate-critic explores a memory of its own in its cache folder; with the variable set that exploration
    went to the shared server (its rules and prototypes mixed into the memory every worker reads)."""
    import json
    from pathlib import Path

    from hmrcritic.cli import main

    monkeypatch.setenv("HMRCRITIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", NOBODY)
    rc = main(["evaluate-critic", "--split", "test", "--num-groups", "2", "--num-generations", "4",
               "--warmup-groups", "2", "--source", "perturbed", "--variants", "full", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    payload = json.loads(captured.out)
    assert payload["num_groups"] == 2 and (Path(payload["workdir"]) / "memory").is_dir()
