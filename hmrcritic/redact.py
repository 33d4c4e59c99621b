"""Secrets never leave the process: one scrubber for every message, trace, report and upload.

An API key can reach text in ways no caller planned: an endpoint that quotes the ``Authorization`` header
back in its 401 body, a base URL carrying ``user:password@`` or ``?api_key=…``, an exception whose repr shows
a request. So every string hmrcritic writes where a person or a file can see it — error lines, retry
warnings, trace events, export failure records, ``doctor``, and (when LangSmith tracing is switched on) the
runs uploaded to LangSmith — goes through :func:`scrub`, which removes

* the values of the key variables (``HMRCRITIC_API_KEY``, ``OPENAI_API_KEY``, ``LANGSMITH_API_KEY``,
  ``LANGCHAIN_API_KEY``, Chroma's ``CHROMA_CLIENT_AUTH_CREDENTIALS``: also its password and base64 form) and any
  value passed to :func:`register_secret` — and, of those of 16+ characters (keys),
  any 8-character piece that mixes letters and digits or cases (an endpoint quoting the key's start and end, or a
  cut of it);
* the credentials of the server addresses in :data:`URL_ENV_VARS` and of any address passed to
  :func:`register_url` (also base64-encoded, as a basic-auth header carries them) — needed for the
  ``user:password@host:port`` form without a scheme (as Chroma and Ray
  take it), which free text cannot tell from an e-mail address;
* the user-info part of any URL (``scheme://user:password@host`` → ``scheme://***@host``);
* the values written under a secret name (:func:`secret_name`: ``key``, ``token``, ``secret``, ``password``,
  ``auth``, ``sig`` … as whole words of the name — ``api_key``, ``accessToken``, ``X-Amz-Signature``, not
  ``author``, ``keyboard``, ``monkey``, nor a count of tokens: ``max_tokens``, ``token_count``), whether the
  process knows them or not: a query parameter or URL fragment (``?api_key=…``, ``#access_token=…``, also
  percent-encoded: ``api%5Fkey=``, ``%3Ftoken%3D…``), a JSON field or dict repr (``"api_key": "…"``,
  ``{'authorization': '…'}``) and a plainly secret ``name=value`` in free text (``password=…``, ``api_key='…'``;
  a bare ``key=`` there is prose);
* ``Bearer`` (in any case) / ``Basic`` credentials (a token of 8+ characters with at least one digit, so prose such as
  "Basic authentication" survives);
* the value of a raw HTTP header line of a secret header (:data:`SECRET_HEADERS`: ``X-API-Key: …``, Azure's
  ``api-key: …``, ``Cookie: …``, ``Proxy-Authorization: …`` …, in any case) quoted in free text — an error body, a
  proxy's or ``curl -v``'s dump — when the value holds such a token (8+ characters with a digit: "Cookie: none" and
  "X-Auth-Token: see the docs" stay readable; under an authorization header also a ``Basic`` credential that decodes
  to ``user:password``, digit or not, and only the credential: its scheme and what follows stay). Only those names
  and (since session 35) secret field names written as an environment or config key (``OPENAI_API_KEY:  …`` in
  ``kubectl describe``, ``api_key: …`` in YAML): a general ``Name: value`` rule would mask prose;
* since session 35: keys of well-known services by their prefix (``sk-…``, ``hf_…``, ``ghp_…``, ``glpat-…``,
  ``xoxb-…``; since session 36 also ``gsk_…``, ``xapp-…``, ``sk_live_…``/``rk_live_…`` (and ``_test_``),
  ``whsec_…``, ``r8_…``, ``npm_…``, ``pplx-…``, AWS ``AKIA…``/``ASIA…`` and Google ``AIza…``, also right after a
  JSON/repr escape or a percent-encoded byte: the prefix stays), curl's ``-u user:password``, a secret field's
  bytes value (``b'…'``), a secret field quoted inside another field's string (a request body in a trace message),
  and in :func:`scrub_tree` a credential-like string under a secret key (LangSmith run inputs
  ``{"api_key": "…"}``).
"""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import Any

MASK = "***"
# Chroma's own basic-auth variable (memory/store.py: it works when the server URL carries no credentials)
SECRET_ENV_VARS = ("HMRCRITIC_API_KEY", "OPENAI_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY",
                   "CHROMA_CLIENT_AUTH_CREDENTIALS")
# server addresses whose ``user:password@`` part is secret wherever it shows up: the Chroma server's and every one of
# config.BASE_URL_VARS (kept in step by tests/test_review_s29_lead.py; config imports this module, not the reverse)
# ... and LangSmith's endpoint: its client's own log lines quote it whole ("Failed to batch ingest runs: … for url:
# http://user:pw@host/runs/batch"), and an "Invalid port" error its password alone
URL_ENV_VARS = ("HMRCRITIC_CHROMA_URL", "HMRCRITIC_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE",
                "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")
# Shorter values would mask ordinary words; real keys are far longer.
MIN_SECRET_LEN = 6

_extra: set[str] = set()
_extra_lock = threading.Lock()

# up to the *last* "@" of the authority, as URL parsers read it: a password with an unencoded "@" in it
# (``user:p@ss@host``) kept everything after its first "@" in view
# (a scheme of at most 32 characters, as real ones are: unbounded, every letter of a run like "sk-sk-sk-…" began a
# scheme read to the run's end — quadratic, seconds for 64 KB)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://)[^/\s?#'\"]+@")
# Secret values by the form they are written in, wherever the name before them is secret (:func:`secret_name`);
# each pattern starts with one character to look for (a pattern starting any other way is tried at every position
# of every text: 3-15 times as slow on a trace record).
# ``?name=value`` after "?", "&", ";" or "#": a query parameter, or an OAuth implicit-flow fragment
# (``#access_token=…``); also percent-encoded, as a URL nested in another's query carries them
# (``next=%2Fcb%3Ftoken%3D…``: an encoded value ends where an encoded "&" or "#" starts the next parameter). The
# name may be percent-encoded (``api%5Fkey=``: a server decodes it, so it was as secret as ``api_key=``).
# The name is matched first and the value read only for a secret name: read with every pair, a value runs to the
# end of a text without "&", "#", quotes or spaces ("x=1;x=1;…"), so each pair scanned the rest of the text (a 64 KB
# line took 4 s).
_PARAM_HEAD = re.compile(
    r"(?P<lead>[?&;#%])(?P<hex>(?<=%)(?:3[Ff]|26|23|3[Bb])|(?<!%))(?P<name>[A-Za-z0-9_.\-%]{1,64}?)"
    r"(?:=|(?P<enc>%3[Dd]))"
)
_PLAIN_VALUE = re.compile(r"[^&#\s'\"]+")
_ENCODED_VALUE = re.compile(r"(?:(?!%2[6Ff]|%23)[^&#\s'\"])+")
# ``name=value`` in free text (``password=hunter2``, ``api_key='sk-…'`` in a settings repr): found by its "=" after
# a secret word, the name read back from there; only a plainly secret name — a bare ``key=`` or ``sig=`` is
# prose or code here (``--set KEY=VALUE``). The value ends at a comma, ")" or ";" unless quoted.
_SECRET_ASSIGN = re.compile(
    r"=(?i:(?<=key=)|(?<=token=)|(?<=secret=)|(?<=password=)|(?<=passwd=)|(?<=pwd=)|(?<=credential=)"
    r"|(?<=credentials=)|(?<=signature=)|(?<=authorization=)|(?<=passphrase=)|(?<=jwt=))"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^&#\s'\",;)]+)"
)
_ASSIGN_NAME = re.compile(r"[A-Za-z0-9_.\-%]{1,64}$")
# ``"name": "value"``: a JSON body or a Python dict's repr quoted in an error (a 401 that echoes the request's
# ``{"api_key": "…"}``, ``Headers({'authorization': 'Bearer …'})``), also JSON escaped inside JSON
# (``\"token\": \"…\"``). Found by its ":", the name read back from there; the value runs to its closing quote,
# past escaped quotes (a value cut off by the end of its line is left: no closing quote, no field).
# (Read in runs between quotes and backslashes: one character at a time, a long value — a trace record's text —
# took 100 µs.)
# (a ``b`` before the quote: a bytes value's repr, ``{'api_key': b'…'}``; any number of backslashes before the
# quotes: JSON quoted inside JSON inside JSON, ``\\\"api_key\\\": …``)
_SECRET_FIELD = re.compile(
    r""":(?P<ws>\s*)(?P<b>b?)(?P<bs>\\*)(?P<vq>["'])(?P<value>(?:[^\\\n"']++|\\.|["'])*?)(?P=bs)(?P=vq)""")
_PAIR_NAME = re.compile(r"""["'](?i:name|key)\\?["']\s*:\s*\\?["'](?P<name>[A-Za-z0-9_.\-]{1,64})\\?["']\s*,\s*\\?$""")
_FIELD_NAME = re.compile(r"""(?P<q>["'])(?P<name>[A-Za-z0-9_.\-]{1,64})\\*(?P=q)\s*$""")
# The words of a parameter or field name that make it secret (the name split at "_", "-", ".", case changes and
# digits: ``X-Amz-Signature``, ``accessToken``, ``api_key2``); a whole word, so ``author``, ``keyboard``, ``monkey``
# and ``max_tokens`` are no secrets (matched anywhere in the name, they were masked)
SECRET_NAME_WORDS = frozenset({
    "key", "apikey", "token", "secret", "password", "passwd", "pwd", "auth", "authn", "authz", "authorization",
    "sig", "signature", "credential", "credentials", "passphrase", "jwt", "bearer", "sessionid", "cookie"})
# ... also a word ending in one of these (``accesstoken``, ``clientsecret``, ``dbpassword``, ``oauthsignature``)
_SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "pwd", "signature", "credential", "credentials")
# ... or holding one of these anywhere (``passwordhash``, ``awsaccesskeyid``: no ordinary word does; "token" and
# "secret" do: ``tokens``, ``tokenizer``, ``secretary``)
_SECRET_INFIXES = ("passw", "credential", "apikey", "accesskey", "secretkey", "privatekey", "authtoken")
# ... or in "key" after one of these (``apikey``, ``secretaccesskey``: "key" alone as a suffix is ``monkey``)
_KEY_KINDS = ("api", "access", "secret", "private", "auth", "session", "signing", "master", "client",
              "subscription", "app", "user", "encryption", "license", "account", "shared", "sas", "hmac")
# ... but not "token" beside one of these words: it names a number of tokens then, not a credential (``token_count``,
# ``token_budget``, ``max_token``, ``tokenLimit``, ``token_usage``; OpenAI's usage fields ``prompt_tokens``,
# ``total_tokens`` are plural, no secret word at all). A trace or an error that quoted one showed "***" for a count.
# Only the "token" word is excused: ``max_token_secret`` still holds "secret", ``id_token`` has no such neighbour.
# Not "used", "num", "number": ``used_token``, ``token_number`` may name *which* token (the one used), a credential.
_TOKEN_MEASURES = frozenset({
    "count", "counts", "budget", "budgets", "limit", "limits", "usage", "total", "max", "min", "length", "len",
    "quota"})
# the words that alone make only a query parameter or field secret, not free text's ``name=`` (``PWD=/home/…`` is a
# shell's working directory)
_WEAK_NAMES = frozenset({"key", "sig", "auth", "cookie", "bearer", "pwd"})
_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# curl's ``-u user:password`` / ``--user user:password`` / ``-fsSLu user:password`` (a command line quoted in a log
# or an error): the password, quoted or not (:func:`_mask_curl_users` decides whether a curl command holds it)
_CURL_USER = re.compile(r"-(?:(?<=\s-)[A-Za-z0-9#:]*?u[ \t]*|(?<=\s-)-user[ \t=]+)"
                        r"(?P<user>(?P<uq>['\"])?[^\s:'\"]+:)(?P<pw>(?(uq)[^'\"\n]+|[^\s'\"]+))")
# Keys of well-known services by their prefix, known to the process or not (a traceback quoting another tool's key,
# a user pasting one into a prompt): OpenAI/Anthropic/DeepSeek ``sk-…`` (``sk-proj-``, ``sk-ant-``), Hugging Face
# ``hf_…``, GitHub ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_``, GitLab ``glpat-``, Slack ``xoxb-`` …:
# the prefix stays (it says which service), a run of 16+ characters after it in a key's shape is masked
# (:func:`_mask_vendor`). Found by the "-" or "_" ending the prefix (one character to look for, as the patterns above).
# Since session 36 also Groq ``gsk_``, Slack's app-level ``xapp-``, Stripe's ``sk_live_`` / ``rk_live_`` (and
# ``_test_``), Replicate ``r8_``, npm ``npm_`` and Perplexity ``pplx-`` (:data:`_ALNUM_PREFIX` says which of them
# are alphanumeric after the prefix and long: there a run with "_" or of under 24 characters is a name).
# Where a prefix may start: a word boundary, or right after a JSON/repr escape (``\n``, ``\t``, ``\r``,
# ``\u0022``) or a percent-encoded byte (``%22``, ``%2F``, ``%3D``), whose last character is a letter or digit
# that ``\b`` reads as part of the key's word (a 401 body quoted as JSON or a repr, a key in an encoded URL stayed
# whole)
_KEY_START = r"(?:\b|(?<=\\[nrt])|(?<=\\u[0-9A-Fa-f]{4})|(?<=%[0-9A-Fa-f]{2}))"
_VENDOR_PREFIXES = ("sk-", "hf_", "gh[pousr]_", "github_pat_", "glpat-", "xox[abeoprs]-", "gsk_", "xapp-",
                    "[rs]k_live_", "[rs]k_test_", "r8_", "npm_", "pplx-", "whsec_")
# (each prefix read first on its own, the start only behind a prefix: read before every "-" and "_", it made a
# 58 KB text's scrub 40 % slower)
_VENDOR_KEY = re.compile(
    r"[-_](?:" + "|".join(f"(?<={p})(?<={_KEY_START}{p})" for p in _VENDOR_PREFIXES) + r")[A-Za-z0-9_\-]{16,}+")
# the prefixes whose keys are alphanumeric after them: a run holding "_" is an identifier (``hf_hub_download_v2``,
# ``npm_config_cache``, ``sk_live_stream_handler``); of these, the session-36 ones are also 24+ characters long
# (Groq 52, Replicate 37, npm 36, Stripe 24 or more): a shorter run is a name (``r8_Block2Conv3x3Norm``)
_ALNUM_PREFIX = re.compile(r"(?:hf|gh[pousr]|(?P<long>gsk|r8|npm|[rs]k_live|[rs]k_test|whsec))_$")
_LONG_PREFIX_MIN = 24
# Keys whose prefix ends in a letter, found by their leading "A" (one character to look for): AWS access key ids
# ``AKIA`` / ``ASIA`` + 16 capitals or digits, Google API keys ``AIza`` + 35 of ``[A-Za-z0-9_-]``; each a whole
# word of exactly that length (``AKIANE``, ``ASIAPACIFIC``, ``ASIA_PACIFIC_…`` are words). An AWS id needs a digit
# among its 16: a 20-capital word (``ASIAPACIFICNORTHEAST``) is a constant's name; an id without one (about 1 in 28
# of them, their 16 being base32) stays in view, which costs less — an id alone grants nothing without its secret
# key, and that one is masked under its name (``aws_secret_access_key``). The 4-letter prefix stays.
_LETTER_PREFIX_KEY = re.compile(
    r"A(?=[KS]IA|Iza)(?<=" + _KEY_START + r"A)"
    r"(?:[KS]IA(?=[A-Z]{0,15}[0-9])[A-Z0-9]{16}(?![A-Za-z0-9_])|Iza[A-Za-z0-9_\-]{35}(?![A-Za-z0-9_\-]))")
# "Bearer" in any case, as HTTP reads auth schemes (a header dumped or echoed lowercased, ``authorization: bearer …``,
# kept its token in view); "Basic" only as written: "basic" is a word of prose
_AUTH_TOKEN = re.compile(r"\b(?P<kind>(?i:bearer)|Basic)(?P<sep>\s+)(?=[A-Za-z0-9._~+/=\-]*\d)[A-Za-z0-9._~+/=\-]{8,}")

# Raw HTTP header lines that carry a credential (``X-API-Key: abcd1234efgh`` in an endpoint's error body or a proxy's
# debug dump): a closed list of names, in any case, as HTTP reads header names; a general ``Name: value`` rule would
# mask prose ("Note: …", "Token: the number of tokens"). Found by their ":" (one character to look for, as the other
# patterns: a pattern starting with the names is tried at every position of every text), behind a name ending one of
# four ways (its last letter checked first: a 58 KB trace text's 1,100 ":" cost 65 µs with the four tried at each, 27
# with it); the whole name is read back from there (:func:`_mask_header`) and must be one of these, at a line start
# or after whitespace, a quote, "{" or ",". The value runs to the end of the line, a quote, a comma or a backslash
# (an escaped ``\r\n`` inside a JSON string ends the line too) and is masked only when it holds a token as the
# Bearer rule reads one: 8+ characters with a digit.
SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-goog-api-key",
    "x-auth-token", "x-access-token", "x-api-token", "private-token", "x-vault-token", "x-amz-security-token",
    "x-subscription-token", "ocp-apim-subscription-key", "x-functions-key", "x-rapidapi-key"})
# ... of which these carry ``<scheme> <credential>``: only the credential is masked (``Authorization: Bearer ***``,
# GitHub's ``Authorization: token ***``), and what follows it stays ("… failed")
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
# Also (session 35) an environment or YAML listing's ``NAME: value`` under a secret field name ending one of these
# ways — ``kubectl describe``'s ``OPENAI_API_KEY:  sk-…``, a config's ``api_key: …``, ``client_secret:``,
# ``db_password:`` — read as a secret header's value is (masked when it holds a token's shape).
_HEADER_HEAD = re.compile(
    r":(?<=[nNeEyYtTdDsS]:)(?i:(?<=authorization:)|(?<=cookie:)|(?<=key:)|(?<=token:)"
    r"|(?<=secret:)|(?<=password:)|(?<=passwd:)|(?<=credential:)|(?<=credentials:)|(?<=signature:))"
    r"(?P<ws>[ \t]*)(?P<q>\\?[\"']?)"
)
# read only after a secret name (:func:`_mask_headers`), so a line of many "-key:" is scanned once. A value runs
# to the end of the line, a quote or a backslash; past a comma that starts another ``name=`` (requests joins
# repeated Set-Cookie headers with ", ") and past a cookie's quoted value (``sid="…"``, RFC 6265)
_HEADER_VALUE = re.compile(r"""(?:=\"[^\"\r\n\\]*\"|,(?=[ \t]*(?:[A-Za-z0-9_.~!#$%&*+^`|-]+="""
                           r"""|\d{1,2}[ -][A-Za-z]{3}[ -]\d))|[^\r\n'\",\\])+""")
_HEADER_NAME = re.compile(r"(?:^|(?<=[\s'\"{,(\[;])|(?<=\\[rnt]))(?P<name>[A-Za-z][A-Za-z0-9_\-]{0,39})$")
# ``('x-api-key', '…')``, ``(b'cookie', b'…')``: httpx's Headers repr of repeated names, http.client's
# getheaders(), raw header lists
_HEADER_TUPLE = re.compile(
    r"""\((?P<lead>\s*b?(?P<q>['"])(?P<name>[A-Za-z][A-Za-z0-9_.\-]{0,63})(?P=q)\s*,\s*b?(?P<vq>['"]))"""
    r"""(?P<value>(?:[^\\\n"']++|\\.|(?!(?P=vq))["'])*)(?P=vq)""")
_AUTH_VALUE = re.compile(r"(?P<scheme>[A-Za-z]+[ \t]+)?(?P<cred>[^\s'\",\\]+)")
# a token as the Bearer rule (:data:`_AUTH_TOKEN`) reads one: 8+ of its characters, one a digit; tried only where a
# run of them starts (tried at every position, a value of 60,000 letters took each one's run to its end: seconds)
_TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9._~+/=\-])(?=[A-Za-z0-9._~+/=\-]*\d)[A-Za-z0-9._~+/=\-]{8,}")


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from everything from now on (e.g. a key handed over in code, not the environment)."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _extra_lock:
            _extra.add(value)


def url_secrets(url: str | None) -> list[str]:
    """The credentials an address carries, with or without a scheme (``[scheme://]user:password@host``): the
    ``user:password`` part and the password alone (or the user alone when it is a token), as written and
    percent-decoded. [] for an address without them."""
    from urllib.parse import unquote

    userinfo = _userinfo(url)
    if not userinfo:
        return []
    user, _, password = userinfo.partition(":")
    found = {userinfo, password or user}
    # a password with "/", "?" or "#" in it: a URL parser takes what comes before that for the port and quotes it
    # in its error ("Port could not be cast to integer value as '<that>'")
    cut = min((i for i in (password.find(c) for c in "/?#") if i > 0), default=0)
    if cut:
        found.add(password[:cut])
    found |= {unquote(s) for s in found}
    # as a basic-auth header carries them (``Authorization: Basic base64(user:password)``), which the Bearer/Basic
    # rule masks only with a digit in it
    return sorted(found | {_base64(s) for s in (userinfo, unquote(userinfo)) if ":" in s})


def _base64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def _userinfo(url: str | None) -> str:
    """The ``user:password`` part of address ``url`` as written ("" when it has none).

    Where a URL parser ends the authority (at the first "/", "?" or "#") unless that cannot be the end: a
    password with one of them unencoded (``http://user:p#ss@host``, ``user:pa/ss@host:8000``) is what a person
    types, and the parser then reads "user:p" as the whole authority — its password was no secret to register,
    and every message that quoted the address (``chroma url '…' is not of the form …``, a judge base URL
    refused) showed it whole. So when the "@" comes only after that end, the authority runs on to the last "@"
    before the next "/", "?" or "#", if what the parser took for it is no ``host[:port]`` (a port of letters) or
    was cut at a "?" or "#" (an address has neither before an "@"); an "@" in a path (``http://h/a@b``) stays
    where it is."""
    if not url or "@" not in url:
        return ""
    rest = url.split("://", 1)[-1]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:cut]
    if "@" in authority:
        return authority.rpartition("@")[0]
    if "@" not in rest[cut:]:
        return ""
    port = authority.rpartition(":")[2] if ":" in authority and not authority.endswith("]") else ""
    if rest[cut] == "/" and (not port or port.isdigit()):
        return ""  # a path with an "@" in it
    first = rest.find("@")
    end = min((i for i in (rest.find(c, first) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:rest.rfind("@", 0, end)]


def register_url(url: str | None) -> None:
    """Scrub the credentials of address ``url`` from everything from now on (a ``--chroma-url`` given on the
    command line: the environment's are known already)."""
    for s in url_secrets(url):
        register_secret(s)


def secret_values() -> list[str]:
    """The literal secrets to mask now, longest first (so a key containing another is masked whole)."""
    # as set and as sent: a key read from a file keeps a ``\r`` or newline the HTTP client never sends
    # (config.api_key strips it), so text quoting the sent key back did not contain the variable's value
    found = {s for v in SECRET_ENV_VARS for s in (os.environ.get(v) or "", (os.environ.get(v) or "").strip())}
    found |= set(_extra)
    chroma = (os.environ.get("CHROMA_CLIENT_AUTH_CREDENTIALS") or "").strip()
    if ":" in chroma:  # user:password, sent base64-encoded
        found |= {_base64(chroma), chroma.partition(":")[2]}
    for v in URL_ENV_VARS:
        found.update(url_secrets(os.environ.get(v)))
    return sorted((s for s in found if len(s) >= MIN_SECRET_LEN), key=len, reverse=True)


# A piece of a key quoted back: OpenAI's 401 shows its start and end ("sk-Q7vXz9K****…f4Hd"), a gateway cuts it to
# its first 20 characters. Masking whole values only let those pieces through to error lines, traces and
# failures.jsonl; any run of PIECE_LEN+ characters of a key of KEY_PIECES_FROM+ characters is masked too (shorter
# secrets — passwords — are masked whole: their pieces are words). A piece counts only when it mixes two of
# lowercase, uppercase and digits, as nearly every 8 characters of a random key do: a key registered in code that
# spells words ("sk-hmrcritic-review-…") masked "hmrcritic" in every later line of the process. Only in texts up to
# PIECE_SCAN_MAX characters (messages, bodies, records): a scan of a multi-MB upload (an image's base64) would cost
# seconds.
PIECE_LEN = 8
KEY_PIECES_FROM = 16
PIECE_SCAN_MAX = 1 << 16
# per set of long secrets: (its pieces, a pattern for the runs of its characters at least PIECE_LEN long)
_piece_sets: dict[tuple[str, ...], tuple[frozenset[str], re.Pattern] | None] = {}


def _pieces(secrets: list[str]) -> tuple[frozenset[str], re.Pattern] | None:
    """The PIECE_LEN-character pieces of the long secrets, and a pattern for the runs of text made only of their
    characters: a piece can lie only inside such a run. (One regex alternation of every piece, tried at every
    position of the text, made every scrub ~2.5 times and a 64 KB text ~10 times as slow as it was: every
    trace record's strings and every log line pay it.)"""
    key = tuple(s for s in secrets if len(s) >= KEY_PIECES_FROM)
    got = _piece_sets.get(key, False)
    if got is False:
        pieces = frozenset(p for s in key for i in range(len(s) - PIECE_LEN + 1) if _mixed(p := s[i:i + PIECE_LEN]))
        chars = sorted({c for p in pieces for c in p})
        got = (pieces, re.compile("[" + "".join(map(re.escape, chars)) + f"]{{{PIECE_LEN},}}")) if pieces else None
        _piece_sets[key] = got
    return got


def _mixed(piece: str) -> bool:
    return sum((any(c.islower() for c in piece), any(c.isupper() for c in piece), any(c.isdigit() for c in piece))) >= 2


def _mask_pieces(out: str, secrets: list[str]) -> str:
    got = _pieces(secrets)
    if got is None or len(out) > PIECE_SCAN_MAX:
        return out
    pieces, runs = got
    spans: list[list[int]] = []
    for run in runs.finditer(out):
        for start in range(run.start(), run.end() - PIECE_LEN + 1):
            if out[start:start + PIECE_LEN] not in pieces:
                continue
            end = start + PIECE_LEN
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
    for start, end in reversed(spans):
        out = out[:start] + MASK + out[end:]
    return out


@functools.lru_cache(maxsize=4096)
def secret_name(name: str) -> bool:
    """Whether a parameter or field called ``name`` carries a secret: one of its words (:data:`SECRET_NAME_WORDS`)
    or a word ending like one (``accesstoken``, ``apikey``). Percent-decoded first (``api%5Fkey``)."""
    from urllib.parse import unquote

    for _ in range(2):  # encoded twice, as a URL inside another URL's query is
        if "%" not in name:
            break
        name = unquote(name)
    words = [w.lower() for w in _NAME_WORD.findall(name)]
    return any(_secret_word_at(words, i) for i in range(len(words)))


def _secret_word_at(words: list[str], i: int) -> bool:
    """Whether ``words[i]`` of a name makes it secret (:func:`_secret_word`), unless it is "token" next to a word
    of counting (:data:`_TOKEN_MEASURES`): two set lookups per word, so a name costs what it did."""
    if words[i] == "token" and ((i > 0 and words[i - 1] in _TOKEN_MEASURES)
                                or (i + 1 < len(words) and words[i + 1] in _TOKEN_MEASURES)):
        return False
    return _secret_word(words[i])


def _secret_word(word: str) -> bool:
    """One lower-case word of a name (:func:`secret_name`): a secret word, or one ending or holding like one."""
    return (word in SECRET_NAME_WORDS or word.endswith(_SECRET_SUFFIXES) or any(p in word for p in _SECRET_INFIXES)
            or (word.endswith("key") and word[:-3].endswith(_KEY_KINDS)))


def _plain(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


# a field or free-text name that is one of these words alone is secret (``{"auth": …}``, ``"pwd": …``); "key" and
# "sig" alone are not there (Chroma's ``{'key': 'legs', 'value': …}``, a sort key)
_WHOLE_FIELD_NAMES = frozenset({"auth", "pwd", "cookie", "bearer"})


@functools.lru_cache(maxsize=4096)
def _secret_field_name(name: str) -> bool:
    """:func:`secret_name` for a JSON field or a free-text ``name=``, where the weak words ("key", "sig", "auth" …)
    count only as the whole name (:data:`_WHOLE_FIELD_NAMES`) or, for "key", after a word saying what kind of key
    (``api_key``, ``secret_key``): in a query string ``?key=`` is an API key, but in a body or a repr ``sort_key``,
    ``cache_key``, ``key_points`` and ``auth_mode`` are not secrets, and masking them hid what an error was about."""
    if not secret_name(name):
        return False
    words = [w.lower() for w in _NAME_WORD.findall(name)]
    for i, word in enumerate(words):
        if word in _WEAK_NAMES:
            if word == "key" and i > 0 and words[i - 1] in _KEY_KINDS:
                return True
        elif _secret_word_at(words, i):
            return True
    return _plain(name) in _WHOLE_FIELD_NAMES


def _mask_params(text: str) -> str:
    """``text`` with the values of its secret ``?name=value`` pairs masked (:data:`_PARAM_HEAD`).

    A pair whose name is no secret is passed over only up to its "=": its value may hold the next pair
    (``?model=m;auth_token=…``, a nested ``next=%2Fcb%3Ftoken%3D…``), which a plain ``re.sub`` would have
    consumed with it."""
    out: list[str] = []
    done = at = 0
    while (m := _PARAM_HEAD.search(text, at)) is not None:
        value = None
        if secret_name(m.group("name")):
            value = (_ENCODED_VALUE if m.group("enc") else _PLAIN_VALUE).match(text, m.end())
        if value is None:
            at = m.end("name")
            continue
        out += (text[done:m.end()], MASK)
        done = at = value.end()
    return "".join(out) + text[done:] if out else text


def _mask_assign(m: re.Match) -> str:
    name = _ASSIGN_NAME.search(m.string, max(0, m.start() - 64), m.start())
    if name is None or not _secret_field_name(name.group()) or _plain(name.group()) in _WEAK_NAMES:
        return m.group(0)
    value = m.group("value")
    return "=" + (value[0] + MASK + value[0] if value[0] in "'\"" else MASK)


def _secret_name(name: str) -> bool:
    """A field, pair or tuple name whose value is secret: a secret field name (whole words) or a secret header's."""
    return _secret_field_name(name) or name.lower() in SECRET_HEADERS


def _mask_field(m: re.Match) -> str:
    if not m.group("value"):
        return m.group(0)
    name = _FIELD_NAME.search(m.string, max(0, m.start() - 72), m.start())
    if name is None:
        return m.group(0)
    field = name.group("name")
    if field.lower() == "value":  # {"name": "X-Api-Key", "value": "…"}: HAR, Postman ("key"), Kubernetes env lists
        pair = _PAIR_NAME.search(m.string, max(0, name.start() - 80), name.start())
        field = pair.group("name") if pair else field
    if not _secret_name(field):
        # a field that is no secret may quote one: a trace message whose content is a request body
        # (``{"content": "{\"api_key\": \"…\"}"}``), an error string holding a dict repr (``"bad body
        # {'password': '…'}"``). Matched whole here, its inside was never read; read now, as a text of its own
        value = m.group("value")
        inner = _SECRET_FIELD.sub(_mask_field, value) if ":" in value else value
        if inner == value:
            return m.group(0)
        return m.string[m.start():m.start("value")] + inner + m.string[m.end("value"):m.end()]
    return ":" + m.group("ws") + m.group("b") + m.group("bs") + m.group("vq") + MASK + m.group("bs") + m.group("vq")


def _basic_credentials(scheme: str | None, cred: str) -> bool:
    """Whether ``cred`` after ``Basic`` in an authorization header is base64 of ``user:password``: a digit-free one
    (``dXNlcjpwYXNz``, "user:pass") is no token by shape, yet under that header and scheme it is the password."""
    import base64
    import binascii

    if not scheme or scheme.strip().lower() != "basic" or len(cred) < 8:
        return False
    try:
        return b":" in base64.b64decode(cred, validate=True)
    except (binascii.Error, ValueError):
        return False


def _secret_header_name(name: str) -> bool:
    """A name whose ``Name: value`` line is read as a secret header's: one of :data:`SECRET_HEADERS`, or a secret
    field name (not a weak word alone: ``Key:``, ``Auth:`` are prose) written as an environment variable or a
    config key is (``OPENAI_API_KEY``, ``client_secret``, ``password``). A hyphenated name is a header's: only the
    closed list (``Max-Api-Key: …`` is no header of ours to read)."""
    low = name.lower()
    return low in SECRET_HEADERS or ("-" not in name and _secret_field_name(name) and _plain(name) not in _WEAK_NAMES)


def _mask_headers(text: str) -> str:
    """``text`` with the values of its raw secret header lines masked (:data:`_HEADER_HEAD`). A name that is no
    secret header's is passed over at its ":" (its value may hold the next header: ``Idempotency-Key: 1
    X-API-Key: …``); an authorization header's credential alone is read and masked, and what follows is read on."""
    out: list[str] = []
    done = at = 0
    while (m := _HEADER_HEAD.search(text, at)) is not None:
        at = m.end()
        start = m.start()
        name = _HEADER_NAME.search(text[max(0, start - 41):start])
        if name is None or (start > 41 and name.start() == 0) or not _secret_header_name(name.group("name")):
            continue
        if name.group("name").lower() in _AUTH_HEADERS:
            auth = _AUTH_VALUE.match(text, m.end())
            if auth is None:
                continue
            cred = auth.group("cred")
            if _TOKEN_SHAPE.search(cred) or _basic_credentials(auth.group("scheme"), cred):
                out += (text[done:auth.start("cred")], MASK)
                done = at = auth.end()
            continue
        value = _HEADER_VALUE.match(text, m.end())
        if value is None:
            continue
        at = value.end()
        if _TOKEN_SHAPE.search(value.group()) is not None:
            kept = len(value.group()) - len(value.group().rstrip())  # trailing blanks stay
            out += (text[done:value.start()], MASK)
            done = value.end() - kept
    return "".join(out) + text[done:] if out else text


def _mask_tuple(m: re.Match) -> str:
    name = m.group("name")
    if not m.group("value") or not _secret_name(name):
        return m.group(0)
    return "(" + m.group("lead") + MASK + m.group("vq")


def _mask_vendor(m: re.Match) -> str:
    """A run after a service's prefix, masked when it has a key's shape: a capital beside a digit or a small
    letter (random keys mix them; ``sk-learn_wrapper_v2`` does not) and, after ``hf_`` / ``gh?_``, no "_" (their
    keys are alphanumeric: ``hf_hub_download_v2`` is a name). Read here, once per run: as a lookahead it was read
    from every prefix in a run to its end, quadratic on "sk-sk-sk-…" (16 s for 64 KB)."""
    run = m.group(0)
    head = m.string[max(0, m.start() - 10):m.start() + 1]
    alnum = _ALNUM_PREFIX.search(head)
    if alnum is not None and ("_" in run[1:] or (alnum.group("long") and len(run) - 1 < _LONG_PREFIX_MIN)):
        return run
    if any(c.isupper() for c in run) and any(c.isdigit() or c.islower() for c in run):
        return run[0] + MASK
    # a lower-case key: DeepSeek's and DashScope's "sk-" + 32 hex digits, Slack's "xoxp-…-<hex>" (3d73515 masked
    # them; a capital alone let them through): digits among letters and no "_" (sk-learn_wrapper_v2 is a name)
    if "_" not in run and sum(c.isdigit() for c in run) >= 4 and any(c.isalpha() for c in run):
        return run[0] + MASK
    return run


# how far back ``curl`` is looked for before a ``-u`` (a long ``-d`` body may come first), and the end of a line
# that no backslash continues (a command written over several lines is one command)
_CURL_LOOKBACK = 2000
_LINE_END = re.compile(r"(?<![\\\r^`])\n|(?<![\\^`])\r\n")
_CURL_WORD = re.compile(r"\bcurl\b")


def _mask_curl_users(text: str) -> str:
    """curl's ``-u user:password``, only in a command with ``curl`` (a word: not ``libcurl``) before it, on its
    line or one it continues (a trailing backslash, cmd.exe's ``^``, PowerShell's backtick), at most
    _CURL_LOOKBACK characters back. The curls and line ends are found once per text (read from each ``-u``, a
    line of many took a regex over 2,000 characters each: 1 s for 64 KB)."""
    if "curl" not in text:
        return text
    import bisect

    curls = [c.start() for c in _CURL_WORD.finditer(text)]
    ends = [e.start() for e in _LINE_END.finditer(text)]

    def mask(m: re.Match) -> str:
        start = m.start()
        i = bisect.bisect_right(curls, start - 4) - 1
        if i < 0 or start - curls[i] > _CURL_LOOKBACK:
            return m.group(0)
        j = bisect.bisect_left(ends, start) - 1
        if j >= 0 and ends[j] >= curls[i]:
            return m.group(0)
        return m.group(0)[:m.start("pw") - start] + MASK

    return _CURL_USER.sub(mask, text) if curls else text


def scrub(text: Any) -> str:
    """``text`` as a string with every secret masked (see the module docstring for what counts)."""
    out = str(text)
    secrets = secret_values()
    for s in secrets:
        out = out.replace(s, MASK)
    out = _mask_pieces(out, secrets)
    out = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", out)
    out = _SECRET_FIELD.sub(_mask_field, out)
    out = _mask_params(out)
    out = _SECRET_ASSIGN.sub(_mask_assign, out)
    out = _mask_headers(out)
    out = _HEADER_TUPLE.sub(_mask_tuple, out)
    out = _mask_curl_users(out)
    out = _VENDOR_KEY.sub(_mask_vendor, out)
    out = _LETTER_PREFIX_KEY.sub(lambda m: m.group(0)[:4] + MASK, out)
    return _AUTH_TOKEN.sub(lambda m: m.group("kind") + m.group("sep") + MASK, out)


# Characters a terminal acts on instead of showing: C0/C1 controls but tab/newline (escape sequences retitle the
# window or clear the screen; a carriage return not ending a line, a vertical tab or a form feed print over what came
# before), zero-width and bidi overrides (text that reads other than it is), a stray BOM.
UNPRINTABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1b\x7f-\x84\x86-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]|\r(?!\n)")


# A lone surrogate: JSON's "\ud800" decodes to one (a model that cut an emoji in half writes it), and Python reads a
# name byte that is not UTF-8 as one. No UTF-8 file, tokenizer or Chroma takes it: shown as U+FFFD instead.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: Any) -> str:
    """``text`` scrubbed (:func:`scrub`) and with what a terminal would act on (:data:`UNPRINTABLE`) shown as
    "?": for an error line that quotes a server, a file or an exception that came from outside."""
    return UNPRINTABLE.sub("?", scrub(text))


def redact_url(url: str | None) -> str | None:
    """A URL safe to print: user-info and secret-looking query values masked (None stays None).

    Also an address without a scheme (``user:pw@host:port``, as Ray and Chroma accept): free text cannot tell
    that from an e-mail address, but a string known to be an address can."""
    if url is None:
        return None
    info = _userinfo(url)
    if info:  # masked as :func:`_userinfo` reads it, before scrub: a password with "#", "/", "?" or a space in it
        # is beyond the free-text pattern, and a ``--chroma-url`` is registered only after its first message
        scheme, sep, rest = url.partition("://")
        url = (scheme + sep if sep else "") + MASK + (rest if sep else url)[len(info):]
    return scrub(url)


# what a setting's status says under its secret name (doctor's ``"api_key": "set"``): no credential; a short
# password ("admin") still is one, as scrub of the same dict's text reads it
_STATUS_WORDS = frozenset({"set", "unset", "none", "null", "empty", "missing", "true", "false", "yes", "no"})


def _secret_entry(key: Any, value: Any) -> bool:
    """Whether ``value`` under dict key ``key`` is a credential to mask whole: a secret field name
    (:func:`_secret_name`: ``api_key``, ``password``, ``authorization``) over a string with no whitespace in it (a
    key, a token, a password), or one holding a token's shape (``Bearer …``). The key and the value were scrubbed
    apart, and a value alone has no secret shape (LangSmith run inputs ``{"api_key": "…"}`` uploaded it); a status
    under such a name stays readable (doctor's ``"api_key": "set"`` / ``"not set"``)."""
    if not (isinstance(key, str) and isinstance(value, str) and value and _secret_name(key)):
        return False
    if value == MASK or value.lower() in _STATUS_WORDS:
        return False
    if not any(c.isspace() for c in value) or _TOKEN_SHAPE.search(value) is not None:
        return True
    # ``<scheme> <credential>`` (an authorization value): a digit-free Bearer token or Basic ``user:password`` has
    # no token shape, yet scrub of the same dict's text masks it (the field is secret)
    auth = _AUTH_VALUE.fullmatch(value.strip())
    scheme = auth.group("scheme") if auth is not None else None
    return scheme is not None and (scheme.strip().lower() == "bearer" or _basic_credentials(scheme, auth.group("cred")))


def _scrub_entry(key: Any, value: Any) -> Any:
    """``value`` under dict key ``key`` scrubbed: masked whole when a credential (:func:`_secret_entry`), and so
    each string of a list or tuple under a secret key (``{"api_key": ["sk-…"]}``, a list of candidate keys)."""
    if _secret_entry(key, value):
        return MASK
    if isinstance(value, (list, tuple)) and isinstance(key, str) and _secret_name(key):
        return type(value)(MASK if _secret_entry(key, v) else scrub_tree(v) for v in value)
    return scrub_tree(value)


def scrub_tree(obj: Any) -> Any:
    """:func:`scrub` applied to every string inside nested dicts, lists and tuples (keys included)."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_tree(k): _scrub_entry(k, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub_tree(v) for v in obj)
    return obj


_langsmith_lock = threading.Lock()
_langsmith_client: Any = None  # the scrubbing client we installed, if any


def guard_langsmith() -> bool:
    """When LangSmith tracing is switched on through its environment variables, make the client that
    LangChain uploads with scrub every run's inputs, outputs, metadata and error text first.

    LangChain records an LLM call's exception *before* our retry loop sees it, so an endpoint that quotes
    the key back in an error body would otherwise reach the upload verbatim. Installs the client if none has
    been made yet; a client made already gets :func:`scrub_tree` as its anonymizer when it has none and hides
    nothing its own way — LangSmith makes a plain one on the first traced call, and a builtin critique (or any
    chain of the caller's) traced first left every later VLM critique of the process uploading the key that a
    401 body quoted. A client with its own anonymizer or ``hide_*`` functions is left alone (its owner chose
    what leaves). Returns whether the client in use scrubs with :func:`scrub_tree` now. With tracing off nothing
    is made (a client, once made, asks the server for its settings in the background at once).
    """
    try:
        from langsmith import run_trees, utils
    except ImportError:  # langsmith absent: nothing can upload
        return False
    if not utils.tracing_is_enabled():
        return False
    global _langsmith_client
    with _langsmith_lock:
        current = run_trees._CLIENT  # noqa: SLF001 - the cached client LangChain's tracer uses
        if current is None:
            from langsmith import Client

            _langsmith_client = current = Client(anonymizer=scrub_tree)
            run_trees.configure(client=_langsmith_client)
        elif getattr(current, "_anonymizer", scrub_tree) is None and not any(
                callable(getattr(current, f"_hide_{part}", None)) for part in ("inputs", "outputs", "metadata")):
            current._anonymizer = scrub_tree  # noqa: SLF001 - what Client(anonymizer=) sets
        return getattr(current, "_anonymizer", None) is scrub_tree
