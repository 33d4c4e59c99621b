"""Review of 73fe6d4 / eec70c1 / 3d853f5: ``config.not_an_address`` (collapsed ``scheme:/``), ``MemoryStore``'s
path check, ``evaluate_critic``'s ``memory_dir`` and ``reproduce``'s ``out_dir``/``model``. Four tests here were
strict xfails on that code (``./run:1`` refused by ``MemoryStore`` after a ``Path`` dropped its ``./``; a password
printed for ``grpc:/…`` and ``http:///…``) until the lead applied the proposed fix; the rest pin what was checked."""

from __future__ import annotations

import pytest

from hmrcritic import config
from hmrcritic.errors import AssetError, InputError

SECRET = "sekretpw99"


@pytest.fixture
def work(tmp_path, monkeypatch):
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HMRCRITIC_HOME", str(home))
    monkeypatch.delenv("HMRCRITIC_MEMORY", raising=False)
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL", raising=False)
    monkeypatch.chdir(cwd)
    return cwd


# ------------------------------------------------------------------------------------- findings (were xfail)
def test_memory_store_takes_the_dot_slash_folder_hmrcritic_memory_names(work, monkeypatch):
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_MEMORY", "./run:1")
    assert config.memory_dir().name == "run:1"  # the variable itself is accepted
    # a missing memory opened read-only: "no memory at …" (AssetError), not "a server address"
    with pytest.raises(AssetError, match="no memory"):
        MemoryStore(config.memory_dir(), chroma_url="", read_only=True)


def test_agent_config_memory_of_a_dot_slash_folder_opens(work, monkeypatch):
    from hmrcritic.agent.state import AgentConfig
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_MEMORY", "./run:1")
    with pytest.raises(AssetError, match="no memory"):
        MemoryStore(path=AgentConfig().memory_dir, chroma_url="", read_only=True)


def test_collapsed_url_of_another_scheme_has_its_password_masked(work):
    with pytest.raises(InputError, match="server address") as err:
        config.not_an_address("MemoryStore: path", f"grpc:/u:{SECRET}@h:1")
    assert SECRET not in str(err.value)


def test_triple_slash_url_has_its_password_masked(work):
    with pytest.raises(InputError, match="server address") as err:
        config.not_an_address("HMRCRITIC_MEMORY", f"http:///u:{SECRET}@h:8000")
    assert SECRET not in str(err.value)


# ------------------------------------------------------------------------------------------- checked fine
@pytest.mark.parametrize("value", [f"HTTP:/u:{SECRET}@h:8000", "https:/user:p%40sekretpw99@host",
                                   f"http:/u:p/{SECRET}@h:8000", f"http:/u:p@{SECRET}@h:8000",
                                   f"chroma:/u:{SECRET}@h:8000"])
def test_collapsed_http_urls_are_refused_masked(work, value):
    with pytest.raises(InputError, match="server address") as err:
        config.not_an_address("MemoryStore: path", value)
    assert SECRET not in str(err.value)


@pytest.mark.parametrize("value", ["./chroma:/x", "/abs/http:/x", "data/run:1", "./run:1", "memory", "~/m"])
def test_folders_are_still_folders(work, value):
    assert config.not_an_address("HMRCRITIC_MEMORY", value) == value
