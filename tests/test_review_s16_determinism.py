"""Review s16 (determinism): the same inputs give the same outputs — a critique handed another memory store is
not answered from the critique made with the first, and an export's manifest does not depend on which worker
of an earlier, interrupted run finished first. Each test failed before its fix."""

from __future__ import annotations

import pytest
from test_export import cfg_for, make_inputs, model_path  # noqa: F401  (fixture)

from hmrcritic.alignment import export as E


def _group(seed: int):
    from test_agent_graph import make_group

    return make_group(seed, n=4)


@pytest.mark.usefixtures("small_prior")
def test_a_kept_critique_with_another_memory_store_is_recomputed(tmp_path):
    """``critique_group(memory=MemoryStore(b))`` after the same group was critiqued with ``MemoryStore(a)``
    returned a's finished critique (a's memory version, a's scores, ``finished_earlier``): the settings digest
    named the configured memory folder, not the store handed in. A folder (``memory="b"``) was recomputed."""
    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.memory import MemoryStore

    s, h, _ = _group(3)
    saver = open_checkpointer(tmp_path / "ck.sqlite")
    a = MemoryStore(tmp_path / "a")  # the starter rules
    b = MemoryStore(tmp_path / "b", seed_starter=False)  # no rules: another memory version
    assert a.version() != b.version()
    kw = {"config": {"render": False, "max_reflections": 0}, "checkpointer": saver, "group_id": "g",
          "run_dir": tmp_path / "run"}
    ra = critique_group(s, h, memory=a, **kw)
    rb = critique_group(s, h, memory=b, **kw)
    assert ra.memory_version == a.version()
    assert rb.memory_version == b.version() and not rb.finished_earlier
    # the same store again: the finished critique, as before
    again = critique_group(s, h, memory=b, **kw)
    assert again.finished_earlier and again.overall == rb.overall and again.memory_version == b.version()


def _export_interrupted(tmp_path, model_path, name, order):  # noqa: F811
    """An export of 4 inputs whose groups finish in ``order`` (as a pool's workers may) and that is stopped
    after 3 of them, then completed with --limit 1: returns the manifest's bytes."""
    inputs = make_inputs(4)
    real = E._serial

    def serial_in(ctx, tasks):
        return real(ctx, [tasks[i] for i in order])

    def stop_after_three(done, total):
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / name
    E._serial = serial_in
    try:
        with pytest.raises(KeyboardInterrupt):
            E.export(cfg_for(out, model_path), inputs=inputs, progress=stop_after_three)
    finally:
        E._serial = real
    s = E.export(cfg_for(out, model_path, limit=1), inputs=inputs)
    assert (s.groups, s.done_before, s.new_groups) == (3, 1, 0)
    return (out / "manifest.jsonl").read_bytes(), (out / "pairs.jsonl").read_bytes()


def test_an_export_s_manifest_does_not_depend_on_worker_finishing_order(model_path, tmp_path):  # noqa: F811
    """The groups of inputs beyond the current ones (an earlier, interrupted export with a larger --limit) kept
    the order in which that run's workers finished: the manifest and pairs.jsonl of the same groups differed
    between a serial and a parallel earlier run."""
    serial = _export_interrupted(tmp_path, model_path, "serial", [0, 1, 2, 3])
    pooled = _export_interrupted(tmp_path, model_path, "pooled", [2, 1, 0, 3])
    assert pooled == serial
