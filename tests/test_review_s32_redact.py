"""Session 32 review: secrets masked by the form they are written in, not only when the process knows them.

Each case is a secret the process does not know (no key variable, nothing registered), so only its form can
mask it: a JSON / dict-repr field, a percent-encoded parameter name, a URL fragment, a ``name=value`` in free
text; and the words that merely contain "auth" or "key" stay readable.
"""

from __future__ import annotations

import pytest

from hmrcritic import redact


@pytest.mark.parametrize("text, secret", [
    ('401: request body {"model": "m", "api_key": "sk-FORM-json-0001"}', "sk-FORM-json-0001"),
    ("request {'token': 'FORM-dict-0002', 'n': 1}", "FORM-dict-0002"),
    ('headers {"Authorization": "Bearer x"}', "Bearer x"),  # too short for the Bearer rule: masked by its field
    ("Headers({'authorization': 'Basic dXNlcjpwdw=='})", "dXNlcjpwdw"),  # no digit: the Basic rule missed it
    ('{"client_secret" : "FORM-spaced-0003"}', "FORM-spaced-0003"),
    (r'{"password": "FORM-esc\"aped-0004"}', "aped-0004"),  # past an escaped quote
    (r'body "{\"access_token\": \"FORM-nested-0005\"}"', "FORM-nested-0005"),  # JSON escaped inside JSON
    ("JudgeSettings(base_url='http://h/v1', api_key='sk-FORM-repr-0006')", "sk-FORM-repr-0006"),
    ("connect host=db password=FORM-dsn-0007 user=x", "FORM-dsn-0007"),
])
def test_a_secret_field_is_masked_by_its_form(clean_secrets, text, secret):
    out = clean_secrets.scrub(text)
    assert secret not in out, out
    assert redact.MASK in out


def test_the_rest_of_a_json_body_stays_readable(clean_secrets):
    out = clean_secrets.scrub('{"error": "bad key", "api_key": "sk-FORM-0008", "model": "gpt-4o", "key": ""}')
    assert out == '{"error": "bad key", "api_key": "***", "model": "gpt-4o", "key": ""}'


@pytest.mark.parametrize("text, secret", [
    ("GET https://h.example/v1?api%5Fkey=FORMpct0009&model=m", "FORMpct0009"),
    ("GET https://h.example/v1?x=1&access%5ftoken=FORMpct0010", "FORMpct0010"),
    ("GET https://h.example/v1?api%255Fkey=FORMpct0011&x=1", "FORMpct0011"),  # encoded twice
    ("redirect next=%2Fcb%3Fx%3D1%26token%3DFORMpct0012%26y%3D2", "FORMpct0012"),  # a URL nested in a query
])
def test_a_percent_encoded_parameter_name_is_matched(clean_secrets, text, secret):
    out = clean_secrets.scrub(text)
    assert secret not in out, out
    assert "model=m" in out or "x=1" in out or "y%3D2" in out


def test_redact_url_masks_a_fragment_token(clean_secrets):
    # OAuth's implicit flow returns the token in the fragment
    url = "https://app.example/cb#access_token=ya29.FORMfrag13&token_type=bearer&expires_in=3600"
    out = clean_secrets.redact_url(url)
    assert "FORMfrag13" not in out and "expires_in=3600" in out
    assert out.startswith("https://app.example/cb#access_token=***")
    assert "FORMfrag14" not in clean_secrets.scrub("redirected to https://a.example/#token=FORMfrag14")


def test_a_parameter_is_secret_by_whole_words_of_its_name(clean_secrets):
    text = "?author=Ada&keyboard=us&monkey=George&max_tokens=256&authority=x&q=1"
    assert clean_secrets.scrub(text) == text  # "auth", "key", "token" only inside longer words
    out = clean_secrets.scrub("?auth=A1&authorization=A2&key=A3&apiKey=A4&apikey=A5&token=A6&access_token=A7"
                              "&secret=A8&password=A9&X-Amz-Signature=B1&sig=B2&credentials=B3&pwd=B4&author=ok")
    assert out.count(redact.MASK) == 13 and out.endswith("author=ok")
    # a pair whose name is no secret no longer hides the secret one after it behind its value
    assert "B5" not in clean_secrets.scrub("?author=Ada;token=B5")


def test_free_text_assignments_of_a_weak_name_stay_readable(clean_secrets):
    text = "--set expects KEY=VALUE; sort key=name; sig=ok; monkey=1; keypoints=17; PWD=/home/ada"
    assert clean_secrets.scrub(text) == text


@pytest.mark.parametrize("name, secret", [
    ("author", False), ("keyboard", False), ("monkey", False), ("max_tokens", False), ("keypoints", False),
    ("authority", False), ("api_key", True), ("apiKey", True), ("APIKEY", True), ("x-api-key", True),
    ("AWSAccessKeyId", True), ("X-Amz-Security-Token", True), ("accesstoken", True), ("clientsecret", True),
    ("db_password", True), ("api%5Fkey", True), ("Authorization", True), ("secretaccesskey", True),
    ("awsaccesskeyid", True), ("passwordhash", True), ("tokenizer", False), ("secretary", False),
])
def test_secret_name(name, secret):
    assert redact.secret_name(name) is secret


@pytest.mark.parametrize("var", ["LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT"])
def test_the_password_of_the_langsmith_endpoint_is_masked_alone(clean_secrets, monkeypatch, var):
    # LangSmith's client logs its endpoint whole; an "Invalid port" error quotes a password with a "/" alone,
    # which no URL pattern can tell from text
    monkeypatch.setenv(var, "http://ls:Pa55w0rd/LSx@127.0.0.1:1")
    out = clean_secrets.scrub("InvalidURL: Invalid port: 'Pa55w0rd/LSx'; password Pa55w0rd/LSx")
    assert "Pa55w0rd" not in out
