"""Session 27: the test session does not follow the developer's own settings.

`make test` on a machine with ``HMRCRITIC_CHROMA_URL`` set pointed the tests' memories — which they reset and fill —
at the developer's shared Chroma server; ``HMRCRITIC_JUDGE=vlm`` / ``OPENAI_BASE_URL`` aimed test critiques at their
endpoint; ``LANGSMITH_TRACING`` uploaded every test's trace. tests/conftest.py now drops them at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_CHILD = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import conftest  # noqa: F401  (what pytest imports first)
from hmrcritic import config
from hmrcritic.agent.state import AgentConfig
mine = ("HMRCRITIC_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_", "CHROMA_")  # not "LANG": LANG=C.UTF-8 is not ours
print(json.dumps({"env": {k: v for k, v in os.environ.items() if k.startswith(mine)},
                  "chroma_url": config.env_chroma_url(), "judge": AgentConfig().judge,
                  "home": str(config.home_dir()), "memory": str(config.memory_dir()), "key": config.api_key()}))
"""


def test_the_developers_settings_do_not_reach_the_tests(tmp_path):
    mine = {"HMRCRITIC_CHROMA_URL": "http://127.0.0.1:9/", "HMRCRITIC_MEMORY": str(tmp_path / "my-memory"),
            "HMRCRITIC_JUDGE": "vlm", "HMRCRITIC_DEBUG": "1", "HMRCRITIC_HOME": str(tmp_path / "my-home"),
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-mine", "LANGSMITH_TRACING": "true",
            "LANGCHAIN_API_KEY": "ls-mine", "CHROMA_CLIENT_AUTH_CREDENTIALS": "me:pw",
            "HMRCRITIC_TEST_MARK": "kept"}
    env = {**os.environ, **mine}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(TESTS)], env=env, capture_output=True, text=True,
                         timeout=120, cwd=TESTS.parent)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["chroma_url"] is None and seen["judge"] == "builtin"
    assert "hmrcritic-test-home-" in seen["home"] and seen["memory"].startswith(seen["home"]) and seen["key"] is None
    # only the test session's home and the tests' own messages to their child processes are left
    assert set(seen["env"]) == {"HMRCRITIC_HOME", "HMRCRITIC_TEST_MARK"}
    assert seen["env"]["HMRCRITIC_TEST_MARK"] == "kept"
