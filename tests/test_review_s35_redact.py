"""Session 35 review of the scrubber's new rules (commit 3d73515): what they still let through, what they mask
that a user needs, and what they cost. Each xfail test fails on the code as it is and names the proposed fix
(see the review report); the plain tests pin what was checked and found right."""

from __future__ import annotations

import time

import pytest

from hmrcritic import redact
from hmrcritic.redact import scrub, scrub_tree

KEY = "Ab3dEf6hIj9kLm2nOp5q"  # a key's shape: mixed case and digits, known to no one


@pytest.fixture(autouse=True)
def _no_known_secrets(clean_secrets, monkeypatch, tmp_path):
    """Only the shape rules under test (conftest's clean_secrets), in a home of its own."""
    monkeypatch.setenv("HMRCRITIC_HOME", str(tmp_path / "home"))


def test_key_status_set_stays_readable_in_scrub_tree():
    """A status under a secret name is no credential: doctor's ``"api_key": "set"`` must read "set" (it read "set"
    before session 35, and "not set" still does)."""
    assert scrub_tree({"api_key": "set"}) == {"api_key": "set"}
    assert scrub_tree({"api_key": "not set"}) == {"api_key": "not set"}


def test_doctor_judge_check_says_the_key_is_set(monkeypatch):
    from hmrcritic.commands.doctor import CHECKS, run_checks

    monkeypatch.setenv("HMRCRITIC_API_KEY", "review-s35-" + KEY)
    report = run_checks(skip=tuple(name for name, _ in CHECKS if name != "judge"))
    judge = next(c for c in report["checks"] if c["name"] == "judge")
    assert judge["settings"]["api_key"] == "set"
    assert "review-s35-" + KEY not in repr(report)


def test_a_credential_under_a_secret_key_is_still_masked():
    """What the session's scrub_tree rule is for, and what a fix for the status must keep."""
    assert scrub_tree({"api_key": KEY}) == {"api_key": "***"}
    assert scrub_tree({"password": "hunter22"}) == {"password": "***"}
    assert scrub_tree({"authorization": f"Bearer {KEY}"}) == {"authorization": "***"}


def test_vendor_key_pattern_is_linear_on_repeated_prefixes():
    """The pattern alone (scrub's ``_URL_USERINFO`` step is slow on this text too, before session 35: measured
    apart). The fixed pattern takes ~2 ms here."""
    text = "sk-" * (32 * 1024 // 3)
    t0 = time.perf_counter()
    for _ in redact._VENDOR_KEY.finditer(text):  # noqa: SLF001 - the pattern under review
        pass
    assert time.perf_counter() - t0 < 0.5


def test_vendor_keys_by_prefix_masked():
    """Shapes the prefix rule was meant for, checked and caught."""
    for text in (f"sk-ant-api03-{KEY}{KEY}", f"sk-proj-{KEY}", f"github_pat_11ABCDEFG0{KEY}", f"xoxp-1234567890-{KEY}",
                 f"glpat-{KEY}", f"(hf_{KEY})", f"'sk-{KEY}'"):
        assert KEY not in scrub(text), text
    for text in ("the sk-learn style API", "risk-free", "task-0123456789abcdefABC"):
        assert scrub(text) == text


@pytest.mark.parametrize("name", ["apiKey", "apikey", "accessToken", "db_passwd", "credentials", "signature"])
def test_config_line_under_other_secret_names_masked(name):
    """``apiKey: …`` (a JS/Kubernetes config), ``accessToken: …``: secret field names (``_secret_field_name``
    says so) written as config keys, as ``api_key: …`` is, and left whole."""
    assert KEY not in scrub(f"{name}: {KEY}")


def test_config_lines_that_stay_readable():
    for text in ("OPENAI_API_KEY: not set", "HMRCRITIC_API_KEY: the key is refused", "token: 4096",
                 "max_tokens: 12345678", "sort_key: abcd1234efgh", "Key: see docs 12345678",
                 "Token: the number of tokens", "monkey: abc123456789"):
        assert scrub(text) == text
    for text in (f"- api_key: {KEY}", f'OPENAI_API_KEY="sk-{KEY}"', f"\tOPENAI_API_KEY:\t\t{KEY}",
                 f"curl --user 'bob:{KEY}' https://h", f'curl --user "bob:{KEY}" https://h',
                 f"{{b'api_key': b'{KEY}'}}"):
        assert KEY not in scrub(text), text


def test_scrub_tree_list_under_a_secret_key():
    assert scrub_tree({"api_key": [KEY]}) == {"api_key": ["***"]}
    assert scrub_tree({"password": ("hunter22",)}) == {"password": ("***",)}


def test_secret_field_in_json_quoted_twice():
    """One level (``{"content": "{\\"api_key\\": …}"}``) is masked since session 35; two are not."""
    import json

    body = {"api_key": KEY}
    for depth in (1, 2):
        body = {"content": json.dumps(body)}
        assert KEY not in scrub(json.dumps(body)), depth


def test_url_userinfo_pattern_is_linear_on_a_long_run():
    """``_URL_USERINFO`` began a scheme at every letter of a run like "sk-sk-…" and read it to the run's end: 64 KB
    took 2–13 s of every scrub (before session 35 too). Schemes are bounded now (~30 ms here)."""
    text = "sk-" * (32 * 1024 // 3)
    t0 = time.perf_counter()
    for _ in redact._URL_USERINFO.finditer(text):  # noqa: SLF001 - the pattern under review
        pass
    assert time.perf_counter() - t0 < 0.5
    assert scrub("git+ssh://user:pw@host/x") == "git+ssh://***@host/x"
