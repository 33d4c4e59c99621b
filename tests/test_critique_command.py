"""`hmrcritic critique` with a bad ``--out``: refused before anything runs.

The output folder used to be made after the critique, so ``--out FILE`` exited 2 only at the end — after
``--learn`` had written the group's prototypes into the memory and the run had been checkpointed as done."""

from __future__ import annotations

import pytest

from hmrcritic.cli import main
from hmrcritic.memory.store import MemoryStore


@pytest.mark.parametrize("where", ["afile", "afile/inside"])
def test_out_on_a_file_is_refused_before_the_memory_learns(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("keep me")
    mem = tmp_path / "mem"
    MemoryStore(mem)  # an existing memory, seeded with the starter rules
    before = MemoryStore(mem, read_only=True).version()
    rc = main(["critique", "--scene", "test:1", "-n", "4", "--no-render", "--learn", "--max-reflections", "0",
               "--group-id", f"out-check-{where.replace('/', '-')}", "--memory", str(mem),
               "--out", str(tmp_path / where)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert MemoryStore(mem, read_only=True).prototypes.count() == 0
    assert MemoryStore(mem, read_only=True).version() == before
    assert not any("memory_write" in line for line in err)  # the agent never ran
    assert err[-1].startswith("error: --out") and str(tmp_path / "afile") in err[-1]
    assert (tmp_path / "afile").read_text() == "keep me"
