"""Session 34 (lead): follow-ups of the session's walk-throughs that landed outside the helpers' files."""

from __future__ import annotations

import pytest

from hmrcritic.agent.api import critique_group

pytestmark = pytest.mark.usefixtures("small_prior")


def test_trace_last_shows_the_finished_run_a_critique_returned_again(tmp_path, monkeypatch):
    """``critique`` of a group already critiqued under the same settings prints "run: X (finished earlier)";
    ``trace --last`` then showed whatever ran before it (another group's run), not X."""
    from test_agent_graph import cfg, make_group

    from hmrcritic.agent.graph import open_checkpointer
    from hmrcritic.agent.trace import read_trace, resolve_run
    from hmrcritic.memory.store import MemoryStore

    monkeypatch.setenv("HMRCRITIC_RUNS", str(tmp_path / "runs"))
    memory = MemoryStore(tmp_path / "mem")
    saver = open_checkpointer(tmp_path / "ckpt.sqlite")
    first = critique_group(*make_group(1, sample_id="walk-a")[:2], memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "a")
    other = critique_group(*make_group(2, sample_id="walk-b")[:2], memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "b")
    assert resolve_run(last=True).stem == other.run_id
    again = critique_group(*make_group(1, sample_id="walk-a")[:2], memory=memory, config=cfg(), checkpointer=saver,
                           run_dir=tmp_path / "a")
    assert again.finished_earlier and again.run_id == first.run_id
    assert resolve_run(last=True).stem == first.run_id
    assert read_trace(last=True)[0]["run_id"] == first.run_id


def test_an_unreachable_server_from_the_environment_says_where_its_address_came_from(tmp_path, monkeypatch):
    """A Chroma address set once in a profile (``HMRCRITIC_CHROMA_URL``) is easily forgotten: `memory stats` failed
    with "cannot reach the Chroma server at …" and no word of the variable, nor that unsetting it uses the folder.
    An address given explicitly (``--chroma-url``) says nothing of the variable."""
    import socket

    from hmrcritic import config
    from hmrcritic.errors import AssetError
    from hmrcritic.memory.store import MemoryStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", f" {url}\r")
    with pytest.raises(AssetError, match=r"from HMRCRITIC_CHROMA_URL; unset it to use the memory folder on disk"):
        MemoryStore(tmp_path / "m", chroma_url=config.env_chroma_url())
    monkeypatch.delenv("HMRCRITIC_CHROMA_URL")
    with pytest.raises(AssetError, match="cannot reach") as given:
        MemoryStore(tmp_path / "m", chroma_url=url)
    assert "HMRCRITIC_CHROMA_URL" not in str(given.value)
