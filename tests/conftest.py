"""Test session setup: point the whole toolkit at a temporary home so tests never touch the user's
folders, and keep torch to the two cores CI has."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="hmrcritic-test-home-")
os.environ["HMRCRITIC_HOME"] = _HOME
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.pop("HMRCRITIC_BODY_MODEL", None)
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("HMRCRITIC_API_KEY", None)

import torch  # noqa: E402

torch.set_num_threads(2)
