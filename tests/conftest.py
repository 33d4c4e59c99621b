"""Test session setup: point the whole toolkit at a temporary home so tests never touch the user's
folders, and keep torch to the two cores CI has."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

_HOME = tempfile.mkdtemp(prefix="hmrcritic-test-home-")
os.environ["HMRCRITIC_HOME"] = _HOME
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.pop("HMRCRITIC_BODY_MODEL", None)
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("HMRCRITIC_API_KEY", None)

import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture()
def memory_held_elsewhere():
    """``with memory_held_elsewhere(path):`` — another process holds the memory at ``path`` for "an exploration"
    (``MemoryStore.exclusive``) until the block ends: for the tests of what a second job may not do."""

    @contextlib.contextmanager
    def hold(path):
        code = textwrap.dedent(f"""
            import sys
            from hmrcritic.memory.store import MemoryStore
            with MemoryStore({str(path)!r}, seed_starter=False).exclusive("an exploration"):
                print("held", flush=True)
                sys.stdin.readline()
        """)
        holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            yield
        finally:
            holder.communicate("\n", timeout=60)

    return hold
