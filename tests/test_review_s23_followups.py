"""Follow-ups (session 23) to the helpers' reports: what they found outside their own files."""

from __future__ import annotations

import socket

import pytest


def _dead_endpoint_export(tmp_path, monkeypatch, capsys):
    """An export whose VLM endpoint never answers: stopped after 3 groups, nothing written."""
    from hmrcritic.cli import main

    held = socket.socket()
    held.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers there
    url = f"http://127.0.0.1:{held.getsockname()[1]}/v1"
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.005")
    monkeypatch.setenv("HMRCRITIC_BASE_URL", url)
    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "0")
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", "5")
    monkeypatch.setenv("HMRCRITIC_VLM_CONCURRENCY", "1")
    out = tmp_path / "ds"
    try:
        rc = main(["export", "--split", "wild", "--judge", "vlm", "--limit", "5", "-n", "2", "--out", str(out)])
    finally:
        held.close()
    capsys.readouterr()
    assert rc == 2 and not (out / "manifest.jsonl").exists()
    return out


def test_validate_and_finetune_name_the_failures_of_an_export_that_wrote_no_group(tmp_path, monkeypatch, capsys):
    """An export whose endpoint could not be used from its first group writes no manifest: validate returned early
    with "did not finish (interrupted or still running)" and never said that 5 inputs failed or were not tried
    (failures.jsonl), nor did finetune — the user waited for an export that had stopped."""
    from hmrcritic.alignment.dataset import validate_dataset
    from hmrcritic.cli import main

    out = _dead_endpoint_export(tmp_path, monkeypatch, capsys)
    report = validate_dataset(out)
    assert not report.ok
    said = " ".join(report.warnings)
    assert "5 input(s) failed" in said and "2 of them were not attempted" in said, said
    rc = main(["finetune", "--data", str(out), "--out", str(tmp_path / "ft"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "5 input(s) failed" in err and "failures.jsonl" in err, err


def test_an_exploration_round_stopped_on_its_endpoint_says_its_groups_stay_explored(monkeypatch, tmp_path):
    """The round's group ids go to explored_on.json before scoring (a kill mid-round must leave them recorded), so a
    round stopped on its endpoint said "nothing was recorded" while its groups were recorded as explored (and refused
    for evaluation with that memory)."""
    from test_explore import _groups, _memory
    from test_review_s22_followups import _refusing_endpoint

    from hmrcritic.agent import api
    from hmrcritic.agent import explore as ex
    from hmrcritic.errors import HMRCriticError

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    train = _groups(tmp_path, "train", 6, seed=1, gens=6)
    mem = _memory(tmp_path / "mem")
    monkeypatch.setattr(api, "critique_group", _refusing_endpoint([]))
    with pytest.raises(HMRCriticError) as info:
        ex.explore(mem, split="train", groups=train, rounds=1, batch_size=6)
    said = str(info.value)
    assert "nothing was learnt" in said and "stay recorded as explored" in said, said
    recorded = ex.explored_record(mem)["splits"]["train"]["group_ids"]
    assert set(recorded) == {g.group_id for g in train}  # what the message says is so


def test_a_train_split_too_small_for_the_pose_prior_says_to_make_it_larger(tmp_path, monkeypatch):
    """A train split of 40 scenes said "generate the train split" — the user had one; it needs 50 poses."""
    from hmrcritic.agent import prior
    from hmrcritic.errors import AssetError

    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HMRCRITIC_SPLIT_SIZE_SCALE", "0.002")  # 40 train scenes
    monkeypatch.setattr(prior, "_CACHE", {})
    with pytest.raises(AssetError) as info:
        prior.get_pose_prior()
    said = str(info.value)
    assert "only 40 train poses" in said and "needs 50" in said and "HMRCRITIC_SPLIT_SIZE_SCALE" in said, said


def test_a_reset_held_on_another_host_is_not_called_cut_short(tmp_path):
    """The holder record of an exploration / import / reset named a pid, no host: on a memory folder shared between
    machines, a reset running on the other one was checked against this machine's processes and read as "a reset
    was cut short … run reset again" (a second reset beside the running one), and "busy with … (pid N)" named an
    unrelated local process. The record carries the host now, and a holder elsewhere is named as such."""
    import json as _json
    import socket as _socket

    from hmrcritic import io as hio
    from hmrcritic.errors import AssetError
    from hmrcritic.memory import store as st

    path = tmp_path / "m"
    st.MemoryStore(path, seed_starter=False).close()
    with hio.exclusive_lock(path / st.EXCLUSIVE_NAME, "a memory reset"):
        rec = _json.loads((path / st.EXCLUSIVE_NAME).with_suffix(".json").read_text())
        assert rec["host"] == _socket.gethostname()
    dead = 2 ** 22 + 12345  # above the usual pid_max: no process here
    (path / st.EXCLUSIVE_NAME).with_suffix(".json").write_text(_json.dumps(
        {"what": "a memory reset", "pid": dead, "host": "other-machine", "since": "2026-12-06 08:00:00"}))
    (path / st.RESET_MARKER).write_text(_json.dumps({"pid": dead, "since": "2026-12-06T08:00:00Z", "server": None}))
    with pytest.raises(AssetError) as info:
        st.MemoryStore(path, read_only=True)
    said = str(info.value)
    assert "being reset right now" in said and f"pid {dead} on other-machine" in said, said

    class Busy(Exception):
        pass

    lock = path / "x.lock"
    lock.with_suffix(".json").write_text(_json.dumps({"what": "an export", "pid": dead, "host": "other-machine",
                                                      "since": "then"}))
    from filelock import FileLock
    with FileLock(str(lock)), pytest.raises(Busy, match="on other-machine"), hio.exclusive_lock(lock, "x", busy=Busy):
        pass


def test_critique_groups_masks_a_secret_in_an_unexpected_failure(monkeypatch, tmp_path):
    """Every error path of critique_groups scrubbed its text but the one for an unexpected exception (a bug, a
    library's own error quoting a request): a key in its message reached GroupResult.error as it was."""
    from hmrcritic.agent import api

    key = "sk-test-" + "q" * 24
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path))

    def broken(*args, **job):
        raise RuntimeError(f"request with Authorization: Bearer {key} failed")

    monkeypatch.setattr(api, "critique_group", broken)
    [res] = api.critique_groups([{"sample": None, "hypotheses": None, "group_id": "g0"}])
    assert res.error is not None and res.error.startswith("RuntimeError:")
    assert key not in res.error and "q" * 24 not in res.error, res.error


def test_a_home_that_is_a_file_is_named_as_the_variable(tmp_path, monkeypatch, capsys):
    """``HMRCRITIC_HOME`` naming a stray file: every command failed with "Not a directory: <home>/cache/mannequin
    (a file is where a folder is needed)" — a path the user never set — without the file in the way or the variable
    that put it there. (doctor's folders check already said so.)"""
    from hmrcritic.cli import main

    stray = tmp_path / "home"
    stray.write_text("")
    monkeypatch.setenv("HMRCRITIC_HOME", str(stray))
    assert main(["memory", "stats"]) == 2
    err = capsys.readouterr().err
    assert f"{stray} is a file, where a folder is needed: HMRCRITIC_HOME names it" in err, err


def test_shipping_a_checkpoint_whose_extra_is_no_dict(tmp_path):
    """``train-base --ship`` on a checkpoint another tool wrote with ``extra`` a list: AttributeError on ``.get``."""
    import torch

    from hmrcritic.hmr.diffusion import load_model, save_model
    from hmrcritic.hmr.train import ship_model

    model = load_model()
    ckpt = tmp_path / "m.pt"
    save_model(model, ckpt)
    payload = torch.load(ckpt, weights_only=True)
    payload["extra"] = ["not", "a", "dict"]
    torch.save(payload, ckpt)
    ship_model(ckpt, {}, tmp_path / "assets")
    assert (tmp_path / "assets" / "base_model.pt").exists()


def test_negative_true_errors_are_refused_before_the_critique(tmp_path):
    """A negative true error (a signed difference passed by mistake) is no distance: the prototype memory refuses it,
    but critique_group only found out at memory_write, after the judge had run."""
    from test_review_s18_embedding import _group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.errors import InputError

    s, h, _ = _group(4)
    with pytest.raises(InputError, match="true_errors_mm must be 4 finite values ≥ 0"):
        critique_group(s, h, config={"render": False, "use_memory": False}, true_errors_mm=[10.0, -3.0, 20.0, 5.0],
                       checkpointer=open_checkpointer(tmp_path / "ck.sqlite"))


def test_scrub_masks_pieces_of_a_key_but_not_words_of_a_short_password(monkeypatch):
    """Pieces of 8+ characters of a key (16+ characters) are masked wherever they show; a short secret (a password)
    is masked whole only, so the words its pieces make stay readable."""
    from hmrcritic.redact import scrub

    key = "sk-proj-Q7vXz9KpWm3LtR8bNcYe2Hf4"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://user:password1@host:8000")
    out = scrub(f"provided: {key[:12]}****{key[-4:]}; cut: {key[3:23]}...; the password field; whole: password1")
    assert all(key[i:i + 8] not in out for i in range(len(key) - 7)), out
    assert "the password field" in out and "password1" not in out, out
    assert scrub("nothing secret here") == "nothing secret here"


def test_an_import_derives_the_id_of_a_prototype_written_without_one(tmp_path):
    """CONTRACTS: ``proto_id "" → derived`` (as ``PrototypeMemory.add`` does); an import refused such a file as "an
    empty id" — a hand-written or another tool's memory file could not be imported."""
    import json as _json

    from test_memory import _proto, _rand_vecs

    from hmrcritic.memory.embeddings import POSE_DIM
    from hmrcritic.memory.store import MemoryStore

    src = MemoryStore(tmp_path / "a", seed_starter=False)
    src.prototypes.add([_proto("p1", _rand_vecs(1, POSE_DIM)[0], source="g1")])
    src.export_json(tmp_path / "m.json")
    data = _json.loads((tmp_path / "m.json").read_text())
    data["prototypes"][0]["proto_id"] = ""
    (tmp_path / "m.json").write_text(_json.dumps(data))
    dst = MemoryStore(tmp_path / "b", seed_starter=False)
    counts = dst.import_json(tmp_path / "m.json")
    assert counts["prototypes"] == 1 and dst.prototypes.count() == 1
    [rec] = dst.prototypes.export_records()
    assert rec["proto_id"].startswith("proto-") and rec["source"] == "g1", rec
