"""Session 36 review of the scrubber's new key prefixes (commit 30da1c6: ``gsk_``, ``xapp-``, Stripe, ``r8_``,
``npm_``, ``pplx-``, AWS ``AKIA``/``ASIA``, Google ``AIza``).

The prefix rules find a key's start with ``\\b``. Text that quotes a key often has an escape or a percent-encoded
byte right before it whose last character is a letter or digit — ``\\n`` / ``\\t`` in a 401 body quoted as JSON or
in a dict's repr, ``\\u0022`` (a quote JSON-escaped), ``%22`` / ``%2F`` / ``%3D`` in an encoded URL — and ``\\b``
reads that character as part of the key's word: the key stayed whole. Those tests failed on 30da1c6's code (strict
xfails in this review); the fix, applied by the lead, reads such an escape or byte as a start too. The plain tests
pin what must stay readable.
"""

from __future__ import annotations

import pytest

from hmrcritic.redact import scrub

# fake keys in each service's documented shape
KEYS = {
    "aws": "AKIAIOSFODNN7EXAMPLE",  # AWS's own documentation example
    "aws_session": "ASIAY34FZKBOKMUTVV7A",
    "google": "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
    "stripe": "sk_live_51H8abcDEF0123456789abcdEFGH",
    "stripe_restricted": "rk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "groq": "gsk_" + "aB3" * 17 + "x",
    "replicate": "r8_" + "Ab1" * 12 + "x",
    "npm": "npm_" + "aB3" * 12,
    "perplexity": "pplx-" + "a1b2" * 12,
    "slack_app": "xapp-1-A0123ABCDEF-1234567890123-" + "ab12" * 16,
    "openai": "sk-proj-" + "Ab3dE" * 8,
}


def _secret_part(key: str) -> str:
    """A piece of the key after its prefix: what must not be in scrub's output."""
    return key[-12:]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_prefix_keys_masked_in_plain_contexts(name):
    """What 30da1c6 promised, in the contexts it handles (guards the fix against losing them)."""
    key = KEYS[name]
    for text in (key, f"x={key}", f"'{key}'", f'"{key}"', f"({key})", f"a/{key}/b", f"https://h/p/{key}?x=1"):
        assert _secret_part(key) not in scrub(text), text


@pytest.mark.parametrize("name", sorted(KEYS))
def test_prefix_keys_masked_after_json_escape(name):
    key = KEYS[name]
    for text in (f"Incorrect API key provided:\\n{key}", f"key:\\t{key}", f"{{\\u0022k\\u0022: \\u0022{key}\\u0022}}",
                 f"line\\r{key}"):
        assert _secret_part(key) not in scrub(text), text


def test_aws_id_in_repr_of_error_body_is_masked():
    """A realistic carrier: an exception made from a response's dict, printed with its repr (the newline before the
    id is written ``\\n``, and ``n`` + ``AKIA…`` is one word to ``\\b``)."""
    bare = str(ValueError({"message": "Invalid credentials\nAKIAIOSFODNN7EXAMPLE"}))
    assert "\\nAKIA" in bare  # repr wrote the newline as backslash + n
    assert "IOSFODNN7EXAMPLE" not in scrub(bare), scrub(bare)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_prefix_keys_masked_after_percent_encoded_byte(name):
    key = KEYS[name]
    for text in (f"data=%7B%22key%22%3A%22{key}%22%7D", f"next=https%3A%2F%2Fh%2F{key}", f"cb%3Fk%3D{key}"):
        assert _secret_part(key) not in scrub(text), text


@pytest.mark.parametrize("text", [
    "hf_hub_download_and_cache_v2", "npm_config_cache_directory_long", "sk_live_stream_handler_for_tests_v2",
    "r8_Block2Conv3x3NormAct", "gsk_short1A", "pplx-70b-online", "ASIAPACIFICNORTHEAST", "ASIA_PACIFIC_2024_REGION1",
    "AKIANE", "c0ffee1234567890abcdef1234567890abcdef12", "123e4567-e89b-12d3-a456-426614174000",
])
def test_names_stay_readable_also_after_escapes(text):
    """Identifiers, hashes and words the prefix rules must keep — plain, after a JSON escape and after a
    percent-encoded byte (the fix must not read an escape as the start of a key for what is no key's shape)."""
    for ctx in ("{}", "line\\n{}", "%2F{}", "\\u0022{}"):
        wrapped = ctx.format(text)
        assert scrub(wrapped) == wrapped, wrapped


def test_stripe_webhook_secret_masked():
    key = "whsec_" + "aB3dE" * 6 + "12"
    assert _secret_part(key) not in scrub(f"STRIPE_WEBHOOK={key}")


def test_stripe_publishable_key_stays():
    """``pk_live_`` is published in every checkout page: no secret, and masking it would hide what a user debugs."""
    text = "pk_live_51H8abcDEF0123456789abcdEFGH"
    assert scrub(text) == text
