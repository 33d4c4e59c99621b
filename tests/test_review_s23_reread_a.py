"""Session 23 re-read (a): what the sum of the round's changes got wrong in the agent, memory and redact files."""

from __future__ import annotations

import random
import string

from hmrcritic import redact


def test_masking_pieces_of_a_key_in_trace_text(monkeypatch):
    """The scan for 8-character pieces of a key, rewritten to look up only the runs of the key's characters (the
    first version was ~9 times as slow on a 60 KB text: benchmarks/bench_scrub.py): text without the key is left
    as it is, pieces of a quoted key are masked in a long text as in a short line."""
    for v in (*redact.SECRET_ENV_VARS, *redact.URL_ENV_VARS):
        monkeypatch.delenv(v, raising=False)
    rnd = random.Random(0)
    key = "sk-proj-" + "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(156))
    record = ('{"event": "node", "node": "critique", "changed": {"scores": ['
              + ", ".join(f'{{"index": {i}, "overall": 7.5, "rationale": "The pose of hypothesis {i} bends the '
                          'left knee beyond its limits; motion structure and image alignment acceptable."}'
                          for i in range(16)) + "]}}")
    text = record * (60000 // len(record))
    assert len(text) <= redact.PIECE_SCAN_MAX

    # its cost is measured by benchmarks/bench_scrub.py (speed is measured in benchmarks, not in timed tests): the
    # first version, one alternation of every piece tried at every position, made a 60 KB text ~9 times as slow
    monkeypatch.setenv("OPENAI_API_KEY", key)
    assert redact.scrub(text) == text  # trace text without the key is left as it is

    # and the pieces are still masked, in that text as in a short line
    quoted = f"HTTP 401: Incorrect API key provided: {key[:20]}****{key[-12:]} (and {key[40:49]})"
    out = redact.scrub(text[:500] + quoted)
    assert key[:20] not in out and key[-12:] not in out and key[40:49] not in out
    assert "hypothesis 2 bends" in out and "Incorrect API key provided: " in out
