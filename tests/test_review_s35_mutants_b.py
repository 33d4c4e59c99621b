"""Session 35 review (helper b): a mutation audit of ``hmrcritic/redact.py``.

Each test pins one rule of the scrubber with a secret in a shape a real tool writes (a curl line, an Azure or
GitHub header, an AWS tag list, a 3scale body, an env dump, a LangSmith run's inputs) and fails on a mutant of that
rule that let the secret through. The tests at the end were strict xfails, secrets that reached the output on the
code of session 35's start; the lead's redact.py changes mask them.
"""

from __future__ import annotations

import pytest

from hmrcritic.redact import scrub, scrub_tree

# mixes cases and digits, as a token does; unknown to the process unless a test registers it
TOKEN = "zQ7vXz9KqP2wL5"


pytestmark = pytest.mark.usefixtures("clean_secrets")


def _hidden(text: str, secret: str = TOKEN) -> str:
    out = scrub(text)
    assert secret not in out, out
    return out


# -- query parameters and fragments ---------------------------------------------------------------------------


def test_semicolon_separated_query_key_is_masked():
    # ``;`` separates query pairs (old HTML forms, matrix parameters); ``key`` alone is secret only in a query,
    # so the free-text ``name=`` rule cannot back this one up
    out = _hidden(f"GET https://maps.example/api/js?v=3;key={TOKEN} 403")
    assert "v=3" in out


def test_percent_encoded_fragment_lead_in_nested_url_is_masked():
    # an OAuth redirect nested in another URL's query: the fragment's "#" and the "=" both percent-encoded
    _hidden(f"redirect https://login.example/cb?next=%2Fapp%23access_token%3D{TOKEN}%26state%3Dx")


def test_lowercase_percent_encoded_equals_is_masked():
    # JavaScript's encodeURIComponent writes upper case, but many proxies log lower-case escapes
    _hidden(f"proxy: GET /cb?next=%2fapp%3ftoken%3d{TOKEN}")


def test_short_query_secret_value_is_masked():
    # a short API key in a query string is still a key
    out = _hidden("GET https://api.example/v1?key=ab12cd&q=x", "ab12cd")
    assert "q=x" in out


def test_doubly_encoded_secret_name_is_masked():
    # a URL inside a URL inside a URL: ``api_key`` arrives as ``api%255Fkey``
    _hidden(f"GET https://h.example/r?u=https%253A%252F%252Fx%253Fa%253D1&api%255Fkey={TOKEN}")


def test_lowercase_single_word_accesstoken_param_is_masked():
    _hidden(f"callback https://h.example/cb?accesstoken={TOKEN}&x=1")


def test_lowercase_awsaccesskeyid_param_is_masked():
    # an access-log line lower-cases the query (S3 presigned URL v2: AWSAccessKeyId)
    _hidden("https://bucket.s3.amazonaws.com/o?awsaccesskeyid=AKIAIOSFODNN7EXAMPLE&expires=1",
            "AKIAIOSFODNN7EXAMPLE")


def test_sessionid_param_is_masked():
    _hidden(f"GET https://h.example/app?sessionid={TOKEN}")


# -- free-text name=value ---------------------------------------------------------------------------------------


def test_free_text_password_assignment_is_masked():
    out = _hidden("psql: connection failed: host=db user=bob password=hunter2pw sslmode=require", "hunter2pw")
    assert "user=bob" in out


def test_free_text_authorization_assignment_is_masked():
    _hidden(f"request kwargs: authorization={TOKEN}, timeout=30")


def test_upper_case_env_dump_assignment_is_masked():
    # ``env`` / ``docker inspect`` output of a key this process does not hold
    _hidden(f"DB_PASSWORD={TOKEN}\nPATH=/usr/bin")


def test_double_quoted_assignment_value_is_masked():
    # a settings repr with a passphrase holding a space
    _hidden('Settings(password="correct horse 42", host="db")', "correct horse 42")


# -- JSON fields, dict reprs, header tuples ---------------------------------------------------------------------


def test_aws_tag_list_capitalised_value_is_masked():
    # ``aws resourcegroupstaggingapi`` / CloudFormation: [{"Key": name, "Value": value}]
    _hidden(f'{{"Tags": [{{"Key": "api_token", "Value": "{TOKEN}"}}]}}')


def test_threescale_user_key_field_is_masked():
    # 3scale's ``user_key`` credential echoed in a JSON error body
    _hidden(f'{{"error": "invalid", "user_key": "{TOKEN}"}}')


def test_pwd_field_is_masked():
    _hidden('{"user": "bob", "pwd": "hunter2pw"}', "hunter2pw")


def test_id_token_field_is_masked():
    _hidden(f'{{"id_token": "eyJhbGciOi.{TOKEN}.sig"}}')


def test_capitalised_set_cookie_in_header_dict_and_tuple_is_masked():
    # requests' ``response.headers`` repr / http.client's getheaders(): a digit-free session value
    value = "sid=abcdefghijklmnop"
    _hidden(f"{{'Set-Cookie': '{value}', 'Content-Type': 'text/html'}}", value)
    _hidden(f"[('Set-Cookie', '{value}'), ('Server', 'nginx')]", value)


def test_header_tuple_without_colon_is_masked():
    # httpx ``Headers([...])`` repr of a repeated header: no ":" for the field or header rules to find
    _hidden(f"Headers([('x-api-key', '{TOKEN}'), ('x-api-key', 'other')])")


# -- raw header lines and auth schemes --------------------------------------------------------------------------


def test_x_auth_token_header_in_curl_line_is_masked():
    _hidden(f"curl -H 'X-Auth-Token: {TOKEN}' https://h.example/v3/servers")


def test_azure_api_key_header_is_masked():
    _hidden(f"curl https://res.openai.azure.com/openai/deployments/d/chat -H \"api-key: {TOKEN}\"")


def test_github_token_scheme_authorization_header_is_masked():
    # GitHub's ``Authorization: token <pat>``: no Bearer for the auth-token rule
    out = _hidden(f"> Authorization: token ghp_{TOKEN}abc\n< HTTP/2 401", f"ghp_{TOKEN}")
    assert "Authorization: token ***" in out


def test_digit_free_basic_credential_with_empty_user_is_masked():
    # Azure DevOps sends a PAT as Basic base64(":" + pat); this one decodes to ":wordpass", no digit
    _hidden("Authorization: Basic OndvcmRwYXNz", "OndvcmRwYXNz")


def test_upper_case_bearer_in_free_text_is_masked():
    _hidden(f"proxy log: auth=BEARER {TOKEN}")


def test_short_bearer_token_is_masked():
    _hidden("upstream said: invalid Bearer a1b2c3d4e5", "a1b2c3d4e5")


# -- containers (LangSmith run inputs) --------------------------------------------------------------------------


def test_scrub_tree_recurses_into_tuples():
    run_inputs = {"args": (f"curl -H 'Authorization: Bearer {TOKEN}'",), "kwargs": {}}
    out = scrub_tree(run_inputs)
    assert TOKEN not in repr(out) and isinstance(out["args"], tuple)


def test_scrub_tree_scrubs_dict_keys():
    # a per-endpoint cache keyed by the base URL, credentials and all
    out = scrub_tree({"http://bob:hunter2pw@10.0.0.1:8000/v1": {"calls": 3}})
    assert "hunter2pw" not in repr(out)


# -- the process's own secrets: environment and registered addresses ---------------------------------------------


def test_env_key_read_with_newline_is_masked_as_sent(monkeypatch):
    # a key loaded from a file keeps its newline; the HTTP client sends it stripped and a 401 quotes that
    # (shorter than KEY_PIECES_FROM, so only the whole value can mask it: a local gateway's short key)
    monkeypatch.setenv("HMRCRITIC_API_KEY", "gw-local-42\n")
    _hidden("401 from gateway: unknown key gw-local-42", "gw-local-42")


def test_chroma_password_alone_is_masked(monkeypatch):
    monkeypatch.setenv("CHROMA_CLIENT_AUTH_CREDENTIALS", "admin:hunterhunter")
    _hidden("chromadb: authentication failed for password 'hunterhunter'", "hunterhunter")


def test_lower_and_digit_piece_of_key_is_masked(monkeypatch):
    # a gateway quoting the first 20 characters of a key made of lower case and digits only
    key = "sk-proj-a1b2c3d4e5f6g7h8i9j0k1l2m3"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    _hidden(f"gateway: key {key[:20]}… rejected", key[8:20])


def test_token_as_url_user_alone_is_masked(monkeypatch):
    # ``https://<token>:@host`` (curl -u "token:" / Stripe's form: a token as the user, empty password) registered
    # as a server address: the token alone, as an error quotes it, is a secret too (short: no piece rule)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gwtok01234567:@gw.example/v1")
    _hidden("proxy rejected credential gwtok01234567", "gwtok01234567")


# -- leaks of the code before session 35's fixes ------------------------------------------------------------


def test_leak_json_body_inside_trace_message_content():
    # a trace/record whose message content quotes a request body: the "content" field's value is matched whole
    # by _SECRET_FIELD and returned unchanged, so the escaped ``\"api_key\": \"…\"`` inside is never read
    _hidden('{"role": "tool", "content": "{\\"api_key\\": \\"' + TOKEN + '\\"}"}')


def test_leak_dict_repr_inside_json_error_string():
    _hidden("{\"error\": \"bad request body {'password': 'hunter2pw'}\"}", "hunter2pw")


def test_leak_scrub_tree_value_under_secret_key():
    # LangSmith run inputs of a tool called with an explicit key
    out = scrub_tree({"inputs": {"api_key": TOKEN, "model": "gpt-4o"}})
    assert TOKEN not in repr(out)


def test_leak_unknown_openai_project_key_in_free_text():
    _hidden(f"retrying with sk-proj-{TOKEN}AbCdEfGh1234 after 401", f"sk-proj-{TOKEN}")


def test_leak_unknown_hf_token_in_free_text():
    _hidden(f"huggingface_hub: invalid token hf_{TOKEN}AbCdEfGhIj", f"hf_{TOKEN}")


def test_leak_kubectl_describe_env_dump():
    # ``kubectl describe pod`` prints the container environment as ``NAME:  value``
    _hidden(f"    Environment:\n      OPENAI_API_KEY:  sk-{TOKEN}\n      MODEL:  gpt-4o")


def test_scheme_less_address_credentials_masked_whole(monkeypatch):
    # Chroma's ``user:password@host:port`` form quoted by a config error: the whole ``user:password`` is a secret
    # (masked longest first: the password alone, masked first, left the user name in view)
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "chromaadmin:s3cretpw@10.0.0.5:8000")
    out = _hidden("chroma url 'chromaadmin:s3cretpw@10.0.0.5:8000' is not of the form host:port", "chromaadmin")
    assert "s3cretpw" not in out and "10.0.0.5:8000" in out


def test_bytes_value_and_curl_user_are_masked():
    """A bytes value's repr under a secret field and curl's ``-u user:password`` (both left in view before)."""
    _hidden("{'api_key': b'abcdefgh12345678'}", "abcdefgh12345678")
    _hidden("curl -u admin:hunter22 https://api.example.com", "hunter22")
    _hidden("curl --user=admin:hunter22 https://api.example.com", "hunter22")


def test_readable_text_stays_readable():
    """What the new rules must leave alone: a status under a secret key, prose, counts, other flags."""
    assert scrub_tree({"api_key": "not set"}) == {"api_key": "not set"}
    for text in ("task-1234567890abcdefgh done", "sk-learn is a library", "password: see the docs",
                 "the max_token: 4096 limit", "Key: 12345678 things", "python -u script.py"):
        assert scrub(text) == text
