"""Session 36: leftovers recorded by earlier sessions in two benchmarks and the secret scrubber.

* bench_text_embedding.py ran ``--repeats 0`` into a StatisticsError traceback (and ``--texts 0`` into a ValueError
  after minutes of fresh interpreters); the other benchmarks refuse a zero count with argparse's one-line error.
* bench_memory.py printed a "p95" of 12 group batches and (in the JSON) of 5 writes without saying so in the
  table; ``--rules 0`` timed retrieval from an empty rule memory.
* redact.py knew service keys only by ``sk-``, ``hf_``, ``gh?_``, ``github_pat_``, ``glpat-``, ``xox?-``: a Groq,
  Slack app, Google, AWS, Stripe, Replicate, npm or Perplexity key quoted outside a secret field went out whole.
"""

from __future__ import annotations

import sys
import time

import pytest

from hmrcritic.redact import scrub, scrub_tree


def _load(name: str):
    from conftest import load_benchmark

    return load_benchmark(name)


class _Stop(Exception):
    """Raised by a stand-in for a script's long part: reaching it means the count was not refused."""


def _stop(*args, **kwargs):
    raise _Stop


# --- bench_text_embedding.py: zero counts ---------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--repeats", "0"], ["--repeats", "-2"], ["--texts", "0"],
                                   ["--repeats", "1", "--texts", "-5"]])
def test_bench_text_embedding_refuses_zero_counts(flags, tmp_path, monkeypatch, capsys):
    bench = _load("bench_text_embedding")
    monkeypatch.setattr(bench.subprocess, "run", _stop)  # no fresh interpreter is started for a refused count
    out = tmp_path / "te.json"
    monkeypatch.setattr(sys, "argv", ["bench_text_embedding.py", *flags, "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2  # argparse's usage error: one line, no traceback
    assert "must be ≥ 1" in capsys.readouterr().err
    assert not out.exists()


# --- bench_memory.py: how many samples a percentile is of; an empty rule memory -----------------------------------

def _fake_memory_results(bench):
    pct = bench._pct  # noqa: SLF001 - the script's own summary, so "n" is what a run writes
    ms = [0.001 * (i + 1) for i in range(200)]
    proto = {"entries": 10_000, "insert_s": 1.0, "insert_per_s": 10_000.0, "query_single_k5": pct(ms),
             "query_group16_k5": pct(ms[:12]), "self_recall_at_1": 1.0, "version_s": 0.001,
             "write_group16": pct(ms[:5])}
    rules = {"rules": 1000, "retrieve_cached_k8": pct(ms), "retrieve_uncached_k8": pct(ms[:50]),
             "record_use_8_rules_s": 0.05}
    return proto, rules


def test_bench_memory_prints_how_many_samples_each_percentile_is_of(tmp_path, monkeypatch, capsys):
    """With the default 200 queries the 16-pose "p95" is of 12 batches and write16's of 5: the JSON said so
    (``n``), the printed table did not."""
    bench = _load("bench_memory")
    proto, rules = _fake_memory_results(bench)
    monkeypatch.setattr(bench, "bench_prototypes", lambda root, size, n: proto)
    monkeypatch.setattr(bench, "bench_rules", lambda root, n_rules, n: rules)
    out = tmp_path / "memory.json"
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--sizes", "10000", "--out", str(out)])
    bench.main()
    printed = capsys.readouterr().out
    line = next(row for row in printed.splitlines() if row.startswith("samples per percentile"))
    for part in ("q1 200", "q16 12", "write16 5", "rules cached 200", "rules uncached 50"):
        assert part in line
    assert "p95 of under 20 samples is near the largest one: q16, write16" in line
    assert out.exists()


@pytest.mark.parametrize("rules", ["0", "-3"])
def test_bench_memory_refuses_an_empty_rule_memory(rules, tmp_path, monkeypatch):
    bench = _load("bench_memory")
    monkeypatch.setattr(bench, "bench_prototypes", _stop)
    monkeypatch.setattr(bench, "bench_rules", _stop)
    out = tmp_path / "memory.json"
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--rules", rules, "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2
    assert not out.exists()


# --- redact.py: more services' keys by their documented prefix ------------------------------------------------------

# realistic shapes (made up): Groq gsk_ + 52, Slack app-level xapp-1-…, Google AIza + 35, AWS AKIA/ASIA + 16,
# Stripe sk_live_/rk_live_/sk_test_ + 24+, Replicate r8_ + 37, npm npm_ + 36, Perplexity pplx- + 48
KEYS = {
    "gsk_": "8fK2mQ9xLp4Rt7Vw1Yz3Bc6Dh0Jn5GsAe9Tq2Wu4Xo7Pk1Mv3RyZ",
    "xapp-": "1-A05B7C9D1EF-6012345678901-4f8a9b2c1d3e4f5a6b7c8d9e0f1a2b3c4f8a9b2c1d3e4f5a6b7c8d9e0f1a2b3c",
    "AIza": "SyD8fK2mQ9xLp4Rt7Vw1Yz3Bc6Dh0Jn5G-_",
    "AKIA": "IOSFODNN7EXAMPLE",
    "ASIA": "Y3KQ7ZP2M4N6B8VX",
    "sk_live_": "51HqL2mEXAMPLEkey0a1B2c3D4e5F6g7H8",
    "rk_live_": "51HqL2mRESTRICTED0a1B2c3D4e5F6g7H8i9",
    "sk_test_": "4eC39HqLyjWDarjtT1zdp7dc",
    "r8_": "Gx7Kp2Lq9Wm4Rt8Yz1Bc5Df3Hj6Nv0Ps2Qa8e",
    "npm_": "Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78",
    "pplx-": "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2w3X4",
}
assert len(KEYS["gsk_"]) == 52 and len(KEYS["AIza"]) == 35 and len(KEYS["r8_"]) == 37 and len(KEYS["npm_"]) == 36


def _contexts(key: str) -> list[str]:
    """A key where no secret name stands before it: a log line, a JSON field of another name, a URL path and a
    parameter of no secret name, a traceback's repr."""
    return [f"2026-12-07 18:40:01 WARNING retrying with {key} after 401",
            f'{{"detail": "invalid credentials", "hint": "{key}"}}',
            f"GET https://api.example.com/v1/{key}/models?x={key}&alt=json",
            f"ValueError('bad key {key!r}')"]


@pytest.mark.parametrize("prefix", list(KEYS))
def test_service_keys_by_prefix_are_masked(prefix):
    key = prefix + KEYS[prefix]
    for text in _contexts(key):
        out = scrub(text)
        assert KEYS[prefix] not in out, (prefix, out)
        assert prefix + "***" in out, (prefix, out)  # the prefix stays: it says which service
    assert scrub_tree({"note": [key]}) == {"note": [prefix + "***"]}


def test_anthropic_keys_were_covered_by_sk_already():
    key = "sk-ant-api03-aB3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_AbCdEfGhIjKlMnOpQrStUvWxYz-0123456789AA"
    assert scrub(f"anthropic: {key} rejected") == "anthropic: sk-*** rejected"


@pytest.mark.parametrize("text", [
    "task_0123456789abcdefGHIJKLmnop finished", "disk_usage_0123456789ABCDEFabcdef", "risk_live_0123456789abcdefABCD",
    "bgsk_8fK2mQ9xLp4Rt7Vw1Yz3Bc6Dh0Jn5GsAe9Tq2Wu4Xo7Pk1Mv3Ry", "gsk_loader_config_v2_Default1",
    "The AKIANE painting", "AKIANE2345678901234567", "ASIAPACIFIC region", "ASIA_PACIFIC_SOUTHEAST_2",
    "ASIAPACIFICNORTHEAST", "XAKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE2", "aws_AKIAIOSFODNN7EXAMPLE",
    "MAIzaSyD8fK2mQ9xLp4Rt7Vw1Yz3Bc6Dh0Jn5G-_", "AIzaShort1234", "AIza" + "b" * 36,
    "self.conv_r8_Gx7Kp2Lq9Wm4Rt8Yz1Bc5Df3Hj6Nv0Ps2Qa8e", "r8_Block2Conv3x3Norm", "r8_layer_norm_Eps1e5_Scale",
    "sk_live_stream_handler_v2_Default", "sk_test_Case1", "npm_config_cache_Dir1234567890abcdef",
    "npm_lifecycle_event", "xapp-config-loader-module", "pplx-search-results-page", "pplx-Model7"])
def test_ordinary_text_with_the_same_letters_stays(text):
    assert scrub(text) == text


@pytest.mark.parametrize("text", ["gsk_" * 262_144, "AKIA" * 262_144, "AIza" * 262_144, "A" * 1_048_576,
                                  "r8_" * 349_526, "sk_live_" * 131_072, "xapp-" * 209_715,
                                  ("AKIA" + "B" * 16 + " ") * 49_932, ("gsk_" + "aB3" * 20 + " AIza" + "x" * 40 + " ")
                                  * 8_000])
def test_new_prefixes_keep_the_scrubber_linear(text):
    """1 MB of repeated prefixes: each took 0.04-0.2 s before the new prefixes (2 shared cores); a quadratic
    pattern would take minutes. 2 s leaves room for a busy machine."""
    start = time.perf_counter()
    scrub(text)
    assert time.perf_counter() - start < 2.0
