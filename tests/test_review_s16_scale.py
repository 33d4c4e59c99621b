"""Review s16 (scale): what a long-lived process keeps, and must let go of.

- Every memory folder a process opened kept its Chroma system (SQLite connections, the vector index, threads)
  after its last MemoryStore was closed or collected: ~10 MB, 16 file descriptors and 7 threads per folder at
  5k prototypes (benchmarks/bench_scale.py), a frozen copy per learning-curve round.
- ``compile_graph`` cached every checkpointer it was given, for ever: ``critique_group(checkpointer=
  InMemorySaver())`` per group kept each saver and all its checkpoints.
"""

from __future__ import annotations

import gc
import os
import shutil
import weakref

import numpy as np
import pytest


def _systems() -> set[str]:
    from chromadb.api.shared_system_client import SharedSystemClient

    return set(SharedSystemClient._identifier_to_system)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _small_memory(folder):
    from hmrcritic.memory import MemoryStore, Prototype, pose_embedding

    store = MemoryStore(folder, seed_starter=False)
    joints = np.random.default_rng(0).normal(scale=0.3, size=(40, 24, 3))
    emb = pose_embedding(joints)
    store.prototypes.add([Prototype(proto_id=f"p{i}", embedding=emb[i].tolist(), overall=5.0, motion_structure=5.0,
                                    physical_feasibility=5.0, image_alignment=5.0, source=f"t/{i}")
                          for i in range(len(emb))])
    return store, emb


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_memory_stores_let_go_of_their_chroma_system(tmp_path):
    """Stores on many folders, each closed or dropped: their Chroma systems stop, open files stay bounded."""
    from hmrcritic.memory import MemoryStore

    src, emb = _small_memory(tmp_path / "src")
    src.close()
    del src
    gc.collect()
    MemoryStore(tmp_path / "warm", seed_starter=False).close()  # settles what came before
    fds0 = _fds()
    opened = []
    for i in range(8):
        dst = tmp_path / f"copy{i}"
        shutil.copytree(tmp_path / "src", dst, ignore=shutil.ignore_patterns(".write.*"))
        m = MemoryStore(dst, read_only=True)
        assert len(m.prototypes.query(emb[:4], k=3)) == 4
        opened.append(str(m.path))
        if i % 2:
            m.close()
        del m  # half closed, half only dropped (what frozen_copy's callers do)
        gc.collect()
    MemoryStore(tmp_path / "last", seed_starter=False).close()  # the last dropped one is settled at an open
    left = _systems() & set(opened)
    assert not left, f"Chroma systems still running for closed/collected stores: {sorted(left)}"
    assert _fds() <= fds0 + 4, f"open files grew from {fds0} to {_fds()} over 8 memory folders"


def test_closing_one_store_keeps_the_other_on_its_folder(tmp_path):
    """Two stores on one folder: closing one stops nothing under the other; a closed store opens again."""
    from hmrcritic.memory import MemoryStore

    a, emb = _small_memory(tmp_path / "m")
    b = MemoryStore(tmp_path / "m", read_only=True)
    a.close()
    assert str(b.path) in _systems()
    assert b.prototypes.count() == 40 and len(b.prototypes.query(emb[:2], k=2)[0]) == 2
    b.close()
    assert str(b.path) not in _systems()
    assert b.prototypes.count() == 40  # used after close: opens the folder again
    assert str(b.path) in _systems()
    a.prototypes.add([])
    assert a.version() == b.version()
    a.close()
    b.close()
    assert str(b.path) not in _systems()


def test_compile_graph_does_not_keep_every_checkpointer():
    """A new in-memory checkpointer per critique: the compiled-graph cache stays bounded and lets them go."""
    from langgraph.checkpoint.memory import InMemorySaver

    from hmrcritic.agent import graph

    savers = [InMemorySaver() for _ in range(30)]
    refs = [weakref.ref(s) for s in savers]
    for s in savers:
        assert graph.compile_graph(s) is graph.compile_graph(s)  # still compiled once while in use
    del savers, s
    gc.collect()
    assert len(graph._COMPILED) <= 8
    alive = sum(r() is not None for r in refs)
    assert alive <= 8, f"{alive} of 30 checkpointers kept alive by the compiled-graph cache"


def test_server_stores_close_their_clients(chroma_url):
    """Each server MemoryStore made Chroma systems (an HTTP connection pool) that outlived it for ever."""
    from chromadb.api.shared_system_client import SharedSystemClient

    from hmrcritic.memory import MemoryStore

    MemoryStore(chroma_url=chroma_url).close()  # creates the collections
    gc.collect()
    before = len(SharedSystemClient._identifier_to_system)
    for i in range(6):
        m = MemoryStore(chroma_url=chroma_url, read_only=True)
        assert m.prototypes.count() == 0
        if i % 2:
            m.close()
        del m
        gc.collect()
    MemoryStore(chroma_url=chroma_url, read_only=True).close()  # settles the last dropped one
    assert len(SharedSystemClient._identifier_to_system) <= before
    m = MemoryStore(chroma_url=chroma_url, read_only=True)
    m.close()
    assert m.rules.all() and m.prototypes.count() == 0  # used after close: a new client
    m.close()


def test_the_nodes_keep_a_bounded_number_of_memory_stores(tmp_path):
    """``get_memory`` cached one MemoryStore per folder named in the settings, for good: a process critiquing
    with many memory folders kept every one (and, through it, its folder's Chroma system) open. Now the stores
    used last are kept, and the most recent one is still the same object."""
    from hmrcritic.agent import nodes
    from hmrcritic.agent.state import AgentConfig

    nodes._MEMORIES.clear()
    first = nodes.get_memory(AgentConfig(memory_dir=str(tmp_path / "m0")))
    stores = [nodes.get_memory(AgentConfig(memory_dir=str(tmp_path / f"m{i}"))) for i in range(1, 12)]
    assert len(nodes._MEMORIES) == nodes.MEMORIES_KEPT
    assert nodes.get_memory(AgentConfig(memory_dir=str(tmp_path / "m11"))) is stores[-1]
    assert all(s is not first for s in nodes._MEMORIES.values())
    nodes._MEMORIES.clear()


def test_a_finished_kept_thread_keeps_its_last_checkpoint_only(tmp_path):
    """Every super-step's checkpoint of a kept critique stayed in the SQLite file, each a full copy of the state,
    although a finished group is only ever read back as its final state. Now the last one alone stays: the state
    read back, a re-run's reuse of it, and an interrupted thread's resume (untouched: only finished threads are
    compacted) work as before."""
    import sqlite3
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.api import critique_group
    from hmrcritic.agent.graph import compile_graph, open_checkpointer

    db = tmp_path / "ckpt.sqlite"
    saver = open_checkpointer(db)
    s, h, _ = make_group(11)
    first = critique_group(s, h, config=cfg(use_memory=False), checkpointer=saver, run_dir=tmp_path / "g")
    con = sqlite3.connect(db)
    try:
        rows = {t: con.execute(f"SELECT COUNT(*) FROM {t} WHERE thread_id = ?", (s.sample_id,)).fetchone()[0]
                for t in ("checkpoints", "writes")}
    finally:
        con.close()
    assert rows["checkpoints"] == 1, rows
    snap = compile_graph(saver).get_state({"configurable": {"thread_id": s.sample_id}})
    assert snap.values["done"] is True and snap.next == ()
    assert [sc["overall"] for sc in snap.values["critique"]["scores"]] == first.overall
    again = critique_group(s, h, config=cfg(use_memory=False), checkpointer=saver, run_dir=tmp_path / "g")
    assert again.finished_earlier and again.overall == first.overall
