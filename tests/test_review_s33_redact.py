"""Session 33 review: "token" beside a word of counting names a number, not a credential.

``token_count``, ``token_budget``, ``tokenLimit``, ``max_token`` … were masked in query strings, JSON fields and
dict reprs (a LangChain trace's usage block, an error quoting a request), so a trace showed "***" for a count.
Every real secret name keeps its value masked in every form the scrubber reads.
"""

from __future__ import annotations

import pytest

from hmrcritic import redact

VALUE = "zQ7vXz9KqP2wL5"  # mixes cases and digits, as a token does; unknown to the process

READABLE = ["token_budget", "max_tokens", "token_count", "tokens_used", "num_tokens", "prompt_tokens",
            "completion_tokens", "total_tokens", "max_completion_tokens", "tokenCount", "tokenLimit", "token_limit",
            "token_usage", "TOKEN_COUNT", "max_token", "total_token_count", "token_length"]
SECRET = ["access_token", "refresh_token", "id_token", "auth_token", "token", "x-auth-token", "bearer_token",
          "api_token", "session_token", "csrf_token", "HF_TOKEN", "GITHUB_TOKEN", "accessToken", "oauth_token",
          "X-Amz-Security-Token", "max_token_secret", "TOKEN"]


def forms(name: str, value: str = VALUE) -> dict[str, str]:
    """``value`` written under ``name`` in each form the scrubber reads a name-value pair in."""
    return {
        "query": f"GET https://api.example/v1/x?model=m&{name}={value}&n=1",
        "fragment": f"redirected to https://app.example/cb#{name}={value}",
        "encoded query": f"next=%2Fcb%3Fx%3D1%26{name}%3D{value}%26y%3D2",
        "json": f'401: request body {{"model": "m", "{name}": "{value}"}}',
        "nested json": f'body "{{\\"{name}\\": \\"{value}\\"}}"',
        "dict repr": f"request {{'{name}': '{value}', 'n': 1}}",
        "headers repr": f"Headers({{'{name}': '{value}'}})",
        "free text": f"settings {name}={value} model=m",
        "quoted free text": f"Settings({name}='{value}')",
    }


@pytest.mark.parametrize("name", READABLE)
def test_a_count_of_tokens_stays_readable(clean_secrets, name):
    assert not redact.secret_name(name)
    for form, text in forms(name, "1234").items():
        assert clean_secrets.scrub(text) == text, form
    usage = f'{{"usage": {{"{name}": 17}}, "note": "{name}=17", "limits": "?{name}=4096"}}'
    assert clean_secrets.scrub(usage) == usage


@pytest.mark.parametrize("name", SECRET)
def test_every_token_secret_is_masked_in_every_form(clean_secrets, name):
    assert redact.secret_name(name)
    for form, text in forms(name).items():
        out = clean_secrets.scrub(text)
        assert VALUE not in out and redact.MASK in out, (form, out)


def test_a_bearer_header_stays_masked(clean_secrets):
    for text in (f"Authorization: Bearer {VALUE}", f"authorization: bearer {VALUE}",
                 f"headers {{'Authorization': 'Bearer {VALUE}', 'token_count': '12'}}"):
        out = clean_secrets.scrub(text)
        assert VALUE not in out, out
    assert "'token_count': '12'" in clean_secrets.scrub(f"{{'access_token': '{VALUE}', 'token_count': '12'}}")


def test_an_oauth_response_masks_the_token_and_keeps_its_counts(clean_secrets):
    text = (f'{{"access_token": "{VALUE}", "token_type": "bearer", "expires_in": 3600, '
            f'"usage": {{"prompt_tokens": "9", "token_budget": "4096"}}}}')
    out = clean_secrets.scrub(text)
    assert VALUE not in out
    assert '"prompt_tokens": "9"' in out and '"token_budget": "4096"' in out
