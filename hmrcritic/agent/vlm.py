"""The VLM judge: any OpenAI-compatible vision endpoint scores a whole group in one call.

Follows the paper's critic (a frozen VLM that sees all hypotheses of a group at once and weighs 3D motion
structure, physical feasibility and image alignment). Beyond the paper, and why:

* Three axes plus ``overall`` on a 0-10 scale (:class:`GroupCritique`); a model that answers on the paper's
  0-100 scale is rescaled, so either prompt style works.
* The prompt carries a measured evidence table and the recalled rules/prototypes as text, so a small local
  VLM has numbers to lean on (see :mod:`hmrcritic.agent.prompts`).
* Robustness for real endpoints: structured output via ``json_schema``; servers that reject it (a 400 or a
  422) get function calling, and servers that reject that get plain text parsed tolerantly (the first JSON
  object holding a list, outside a ``<think>`` block, comments/trailing commas/single quotes allowed, 0-100 and
  0-1 rescaled, clamped, missing axes filled from ``overall``, scores written as fractions read on their scale,
  hypotheses named by their grid label or keying an object). Answers with the wrong hypotheses are rejected.
  Tool arguments sent as an object, and a 200 carrying an error object, are read as a conforming server would
  have sent them (:func:`_tolerated`), as are an answer filed whole in the reasoning field (vLLM's
  ``--reasoning-parser``) and one streamed unasked (:func:`_assembled`); a server on this machine is reached
  directly, past any ``HTTP(S)_PROXY``. Timeouts, 5xx, 408, 409, 429 (``Retry-After`` honoured, also on a 503;
  not OpenAI's ``insufficient_quota``, which no wait cures) and unusable answers (whose retry spells out the shape
  asked for in the prompt) are retried with exponential backoff and jitter, as is a refused connection (not a TLS
  handshake that fails for good); then :class:`~hmrcritic.errors.JudgeError` names the group and the last reason in
  one line. A step down to a simpler form is warned of once the call that made it ends with it standing.
  ChatOpenAI's own retries are off (``max_retries=0``) so this policy is the only one in force.
* A process-wide semaphore per endpoint bounds the requests in flight (``JudgeSettings.max_concurrency``);
  :meth:`VLMJudge.critique_many` fans groups out on a thread pool of that size.

The API key comes from :func:`hmrcritic.config.api_key` only. It is handed to the client as a secret and is
scrubbed from every message this module writes (logs and errors); errors are raised outside the ``except``
block so no provider exception (which may quote a request) rides along as ``__context__``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hmrcritic.agent import prompts

# failures of the endpoint itself in a row, with no group scored in between, after which a batch stops: the one
# count of every batch path (export, critique_groups, the evaluations, exploration), kept in the agent's api, which
# the builtin path imports without this module
from hmrcritic.agent.api import UNUSABLE_IN_A_ROW
from hmrcritic.agent.judges import JudgeContext, Mistake
from hmrcritic.agent.schema import (
    AXES,
    GroupCritique,
    HypothesisScore,
    ProposedRule,
    RuleProposals,
    finite_float,
)
from hmrcritic.config import JudgeSettings, api_key, check_base_url
from hmrcritic.errors import InputError, JudgeError
from hmrcritic.redact import LONE_SURROGATE, guard_langsmith, printable, redact_url, register_secret, scrub

log = logging.getLogger(__name__)

MODES = ("json_schema", "function_calling", "text")
COMPARATORS = (">", ">=", "<", "<=")
# Used when no key is set: local servers (vLLM, Ollama, LM Studio) accept any bearer token.
NO_KEY_PLACEHOLDER = "EMPTY"

_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


def endpoint_semaphore(base_url: str | None, limit: int) -> threading.BoundedSemaphore:
    """The process-wide limiter for one endpoint and limit: every judge talking to ``base_url`` with the same
    ``max_concurrency`` shares it (judges of one endpoint with different limits each keep their own — a limit
    is a judge's setting, and one shared semaphore cannot hold two sizes)."""
    key = (base_url or "default", max(1, int(limit)))
    with _SEMAPHORES_LOCK:
        if key not in _SEMAPHORES:
            _SEMAPHORES[key] = threading.BoundedSemaphore(key[1])
        return _SEMAPHORES[key]


class Unparseable(ValueError):
    """The endpoint answered, but not with something we can use (retried like a transient failure)."""


class _Deadline(Exception):
    """A call took longer than ``timeout_s`` in all (the HTTP client's timeout bounds each read only)."""


def invoke_within(runnable, messages, seconds: float):
    """``runnable.invoke(messages)``, or :class:`_Deadline` once ``seconds`` have passed.

    The HTTP client's timeout bounds each read, so a server that keeps sending a byte now and then (a stalled
    stream, a proxy's keep-alive) would hold a group, and its endpoint slot, indefinitely. The call runs in a
    daemon thread (with this context, so tracing keeps its parent run) and is abandoned at the deadline; its
    connection closes when the server gives up or the process ends."""
    import contextvars

    box: dict[str, Any] = {}
    done = threading.Event()
    ctx = contextvars.copy_context()

    def run() -> None:
        try:
            box["result"] = ctx.run(runnable.invoke, messages)
        except BaseException as exc:  # handed to the caller as it is
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="vlm-call").start()
    # a little grace, so that a silent server trips the client's own read timeout first (same message either way)
    if not done.wait(seconds + 0.25):
        raise _Deadline()
    if "error" in box:
        raise box["error"]
    return box["result"]


# ---------------------------------------------------------------------------------------------- parsing


def extract_json(text: str) -> Any:
    """The JSON answer embedded in ``text`` (prose, code fences and all): the first object that holds a list
    (``{"scores": [...]}``, ``{"rules": [...]}``) or list of objects, else the first object or array.

    The first JSON value of all was taken, and prose quotes other JSON before its answer: a reference such as
    "hypothesis [3] is the worst" or the format it was asked for (``{"index": 0, ...}``) was rejected as the
    answer on every retry, although the answer followed in the same text.

    An answer that is JSON only in a model's loose sense (``//`` or ``/* */`` comments, trailing commas, Python's
    single quotes and True/False/None, keys without quotes) is read as such when no strict JSON in the text holds
    a list: it was rejected on every retry, and with a misleading reason ("answer scores 0 hypotheses", from an
    empty ``rules_applied`` list inside it). The answer wrapped as a tool call written out as text (``{"name": ...,
    "arguments": {...}}``, as models without native tool calls write it) is the arguments."""
    first: Any = None
    for relaxed in (False, True):
        i, budget = 0, _RELAXED_BUDGET  # the relaxed reader is Python: bounded, as a brace left open rescans the rest
        while i < len(text) and budget > 0:
            if text[i] not in "{[":
                i += 1
                continue
            try:
                if relaxed:
                    value, end = _relaxed_decode(text, i, min(len(text), i + budget))
                    budget -= end - i
                else:
                    value, end = _DECODER.raw_decode(text, i)
            except ValueError as exc:
                budget -= getattr(exc, "read", 0)
                i += 1
                continue
            except RecursionError:  # nested deeper than Python's stack (a model looping on "[[[["): it raised out
                # of critique as a traceback. The rest of the run of brackets is as deep, less one each: skipped
                opener = text[i]
                while i < len(text) and text[i] == opener:
                    i += 1
                continue
            if (found := _answer_in(value)) is not None:
                return found
            first = value if first is None else first
            i = end  # not inside it: an entry of a quoted example is no answer either
    if first is not None:
        return first
    raise Unparseable(_NO_JSON)


_NO_JSON = "no JSON object in the answer"
# said after the retries all met an answer without JSON ("unusable answer (no JSON object in the answer)" named no
# next step). Every form asked for JSON (a schema, a tool, the prompt's own words) and the retries said what was
# wrong: the model does not follow that, and no setting of the judge's makes it. Another model does
_NO_JSON_ADVICE = ("; the model does not answer in JSON as asked: use a model that follows JSON instructions "
                   "(--vlm-model or HMRCRITIC_VLM_MODEL)")


_DECODER = json.JSONDecoder()
_RELAXED_BUDGET = 200_000  # characters the relaxed reader may look at per answer (about 0.1 s)


def _answer_in(value: Any, depth: int = 0) -> Any:
    """``value`` when it looks like an answer (an object holding a list, a list of objects), or the answer it
    wraps (a tool call as text: ``arguments`` as an object or a JSON string), else None."""
    if isinstance(value, dict) and any(isinstance(v, list) for v in value.values()):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and depth < 2:
        for key in ("arguments", "parameters", "args", "input"):
            inner = value.get(key)
            if isinstance(inner, str):
                try:
                    inner = json.loads(inner)
                except ValueError:
                    continue
            if isinstance(inner, dict) and (found := _answer_in(inner, depth + 1)) is not None:
                return found
    return None


_WORDS = {"True": "true", "False": "false", "None": "null"}


def _relaxed_decode(text: str, start: int, stop: int) -> tuple[Any, int]:
    """``(value, end)`` of the loose JSON at ``text[start]`` (see :func:`extract_json`): comments dropped, trailing
    commas dropped, single-quoted strings, bare keys and Python's words turned into JSON's; :class:`_Loose` when it
    is not that (it reads no further than ``stop``)."""
    out: list[str] = []
    depth, i, n = 0, start, stop
    while i < n:
        c = text[i]
        if c in "\"'":
            j, raw = i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    raw.append(text[j:j + 2])
                    j += 2
                else:
                    raw.append(text[j])
                    j += 1
            if j >= n:
                raise _Loose(n - start)
            body = "".join(raw)
            if c == "'":  # the same characters, as a JSON string: \' is ', and a bare " is escaped
                body = re.sub(r'(?<!\\)((?:\\\\)*)"', r'\1\\"', body.replace("\\'", "'"))
            out.append('"' + body + '"')
            i = j + 1
            continue
        if text.startswith("//", i) or c == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise _Loose(n - start)
            i = j + 2
            continue
        if c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word, k = text[i:j], j
            while k < n and text[k] in " \t":
                k += 1
            # a key without quotes (JavaScript's {index: 0}) is a key; True/False/None are JSON's words
            out.append(json.dumps(word) if k < n and text[k] == ":" else _WORDS.get(word, word))
            i = j
            continue
        if c in "}]":
            while out and out[-1].isspace():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
            depth -= 1
        elif c in "{[":
            depth += 1
        out.append(c)
        i += 1
        if depth == 0:
            try:
                return json.loads("".join(out)), i
            except (ValueError, RecursionError):
                raise _Loose(i - start) from None
    raise _Loose(n - start)


class _Loose(ValueError):
    """Not loose JSON either; ``read``: the characters looked at (charged to the reader's budget)."""

    def __init__(self, read: int):
        super().__init__("not JSON")
        self.read = read


def _answer_text(content: str) -> str:
    """A plain-text answer without the reasoning a thinking model puts before it (everything up to the last
    ``</think>``; some chat templates open the block in the prompt, so only the closing tag is in the answer).

    The reasoning quotes the prompt's example entry or drafts single scores as JSON, and the first JSON object
    of the whole text was taken for the answer: it was rejected (no 'scores' list) on every retry."""
    _, sep, tail = content.rpartition("</think>")
    if not sep and content.lstrip().startswith("<think>"):
        # a block never closed (cut at the output limit, or the model stopped thinking aloud): all reasoning, no
        # answer. A score list drafted in it was taken for the answer
        return ""
    return tail if sep else content


# What an endpoint's words may not carry on into files, the memory and terminals: lone surrogates (JSON's "\ud800"
# decodes to one; no UTF-8 file or Chroma can hold it), C0/C1 controls (escape sequences that retitle or clear a
# terminal, NUL) and bidi embeddings/overrides/isolates (text that reads other than it is). Zero-width joiners and
# marks stay: emoji sequences and Persian/Arabic text need them.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> str:
    """``text`` from the endpoint as hmrcritic keeps it: lone surrogates as U+FFFD, controls as "?" (see above).

    A rationale with a lone surrogate (``"\\ud800"`` in the answer's JSON, as a model that cut an emoji in half
    writes it) passed validation and failed the critique at the memory write ("surrogates not allowed", from
    Chroma), after the endpoint had been paid for; the report could not be written either. An escape sequence
    went on verbatim into scores.json, the memory and the CLI's table, where it acted on the user's terminal."""
    return _CONTROL.sub("?", LONE_SURROGATE.sub("\ufffd", text))


# "#2", "h2", "hyp 2", "Hypothesis #2", and with a separator "hyp_2", "hypothesis-2", "tile 2" (refused before)
_LABEL = re.compile(r"\s*(?:(?:h|hyp|hypothesis|tile)[\s_:-]*)?#?\s*(\d+)\s*", re.IGNORECASE)


def _index(value: Any) -> int:
    """A hypothesis index as an int: an integer, or a number or numeral with an integral value ("2", 2.0), or
    a label as the grids ("#2") and the reflection's feedback ("h2") write it.
    ``int()`` alone truncated 1.9 to 1 and read ``true`` as 1, silently pairing scores with the wrong
    hypotheses; those now raise like any other unusable index. A label was refused on every retry, although
    it names its tile as plainly as the number does."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an index")
    if isinstance(value, str) and (m := _LABEL.fullmatch(value)):
        value = m.group(1)
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"{value!r} is not an integer")
    return int(number)


# a value that says "no score" (an axis the model could not judge): filled like a missing one
_NO_SCORE = {"", "n/a", "na", "none", "null", "nan", "-", "unknown"}
_FRACTION = re.compile(r"\s*([-+]?\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*(\d+(?:\.\d+)?)|(%))?\s*", re.IGNORECASE)


def _score(value: Any, pos: int, field: str) -> float | None:
    """A score as a float on the 0-10 scale of the fraction it is written as ("7/10", "85/100", "70%"), a
    number or numeral as it is, None when it is absent or says so ("N/A", NaN, null).

    Any other text was read as absent: a present ``overall`` of "9/10" was replaced by the mean of the axes,
    so the model's ranking was silently swapped for another one. Text that is no score is now refused (and
    retried with the reason) rather than guessed around."""
    if isinstance(value, bool):  # float(True) is 1.0: a "true" for overall was read as a score of 1 out of 10
        raise Unparseable(f"score entry {pos} has {field} {json.dumps(value)}, not a number")
    number = finite_float(value)
    if number is not None or value is None or (isinstance(value, float) and math.isnan(value)):
        return number
    if isinstance(value, float | int):
        # JSON's Infinity (or 1e999, or an integer of hundreds of digits) read as absent: an infinite overall was
        # swapped for the mean of the axes, or the entry said to have "no scores". Refused with the value instead,
        # so the model is told what to fix; NaN stays "no score", as "N/A" does
        raise Unparseable(f"score entry {pos} has {field} {json.dumps(value)[:40]}, not a finite number")
    text = str(value).strip()
    if text.lower() in _NO_SCORE:
        return None
    m = _FRACTION.fullmatch(text)
    if m is not None:
        whole = 100.0 if m.group(3) else float(m.group(2) or 10.0)
        if whole > 0 and math.isfinite(score := float(m.group(1)) * 10.0 / whole):  # not "9999…/10" (inf)
            return score
    raise Unparseable(f"score entry {pos} has {field} {text[:40]!r}, not a number")


def _keyed(value: Any) -> list | None:
    """Scores given as an object keyed by hypothesis (``{"0": {...}, "h1": {...}}``) as a list whose entries carry
    their key as the index (unless they name one themselves), else None. Such an answer was refused on every retry
    ("no 'scores' list") although it names each hypothesis as plainly as a list does."""
    if not isinstance(value, dict) or not value or not all(isinstance(v, dict) for v in value.values()):
        return None
    return [{"index": k, **v} for k, v in value.items()]


def normalise_critique(data: Any, n: int) -> GroupCritique:
    """Turn whatever the endpoint returned into a valid critique of exactly ``n`` hypotheses, or raise.

    Tolerated: a bare list of scores; ``score``/``comment``/``id`` aliases (the paper's critic answers one
    score and a comment); scores as numerals or fractions ("7", "7/10", "85/100", "70%"), "N/A" as absent;
    indices as labels ("#2", "h2", "hyp_2"); scores as an object keyed by hypothesis; a 0-100 scale (rescaled
    when the answer is mostly above 10), a 0-1 scale (every value within [0, 1], one a fraction); values outside
    the scale (clamped); missing axes (filled from ``overall``; a missing ``overall`` is the mean of the axes);
    missing indices when the list has exactly ``n`` entries (taken in order); indices 1..n (shifted).
    Rejected: the wrong number of hypotheses, duplicate or out-of-range indices, entries without scores, a
    score that is words.
    """
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if isinstance(data, list):
        data = {"scores": data}
    if not isinstance(data, dict):
        raise Unparseable("answer is not a JSON object")
    entries = next(
        (data[k] for k in ("scores", "hypotheses", "results") if isinstance(data.get(k), list)), None
    )
    if entries is None:
        entries = next((_keyed(data[k]) for k in ("scores", "hypotheses", "results")
                        if _keyed(data.get(k)) is not None), None)
    if entries is None:
        raise Unparseable("answer has no 'scores' list")
    if len(entries) != n:
        raise Unparseable(f"answer scores {len(entries)} hypotheses, expected {n}")
    rows = []
    for pos, e in enumerate(entries):
        if not isinstance(e, dict):
            raise Unparseable(f"score entry {pos} is not an object")
        idx = e.get("index", e.get("id", e.get("hypothesis")))
        vals = {a: _score(e.get(a), pos, a) for a in AXES}
        overall = _score(e.get("overall", e.get("score")), pos, "overall")
        known = [v for v in vals.values() if v is not None]
        if overall is None:
            if not known:
                raise Unparseable(f"score entry {pos} has no scores")
            overall = sum(known) / len(known)
        vals = {a: (overall if v is None else v) for a, v in vals.items()}
        rationale = e.get("rationale", e.get("comment", e.get("reason", "")))
        rows.append({"index": idx, "overall": overall, **vals, "rationale": str(rationale or "")})
    # indices: all given or none given
    given = [r["index"] for r in rows]
    if all(i is None for i in given):
        for pos, r in enumerate(rows):
            r["index"] = pos
    else:
        try:
            ints = [_index(i) for i in given]
        except (TypeError, ValueError):
            raise Unparseable("hypothesis indices are missing or not integers") from None
        if sorted(ints) == list(range(1, n + 1)):
            ints = [i - 1 for i in ints]
        if sorted(ints) != list(range(n)):
            raise Unparseable(f"hypothesis indices {sorted(ints)} are not exactly 0..{n - 1}")
        for r, i in zip(rows, ints, strict=True):
            r["index"] = i
    # the paper's 0-100 scale when the answer is mostly on it; a value or two just above 10 in a 0-10 answer are
    # clamped (dividing everything by 10 for one 10.5 would shrink the whole group's scores tenfold). A field whose
    # own median is far above 10 is on 0-100 whatever the rest: `overall` on the paper's scale beside axes on 0-10
    # was clamped to 10 for every hypothesis, a tie that threw the group's ranking away.
    def median(vals: list[float]) -> float:
        return sorted(vals)[len(vals) // 2]

    pooled = median([r[k] for r in rows for k in ("overall", *AXES)]) > 10.0
    scale = {k: 10.0 if pooled or median([r[k] for r in rows]) > 20.0 else 1.0 for k in ("overall", *AXES)}
    # a 0-1 answer (0.85 for a good pose): every value within [0, 1] and one a fraction. Read on 0-10 it made every
    # hypothesis of the group near-worthless, silently (the ranking survived, the scores did not: they go on as
    # prototypes' calibration and into the reports). A 0-10 answer that low on every axis of every hypothesis,
    # with a fraction among them, is not one a critic that starts at 10 and takes points off gives.
    values = [r[k] for r in rows for k in ("overall", *AXES)]
    if all(0.0 <= v <= 1.0 for v in values) and any(0.0 < v < 1.0 for v in values):
        scale = dict.fromkeys(scale, 0.1)
    scores = []
    for r in sorted(rows, key=lambda r: r["index"]):
        clamp = {k: min(10.0, max(0.0, r[k] / scale[k])) for k in ("overall", *AXES)}
        scores.append(HypothesisScore(index=r["index"], rationale=r["rationale"], **clamp))
    applied = data.get("rules_applied") or []
    # as the prompt shows them ("[rule-1a2b]"), or one string ("rule-1a2b, rule-3c4d"): ids hold no whitespace
    # (prompts.shown_rule_id). Dropped, the rule was not counted as used, and the reflection asked for a revision
    # (another paid call) for a rule the answer had applied.
    applied = applied.replace(",", " ").split() if isinstance(applied, str) else applied
    applied = [str(x).strip(" \t\n\"'`[]") for x in applied] if isinstance(applied, list) else []
    return GroupCritique(scores=scores, summary=str(data.get("summary") or "")[:1000], rules_applied=applied)


def normalise_proposals(data: Any, ctx: JudgeContext) -> RuleProposals:
    """Keep at most two usable, new rules; an executable condition survives only if it is complete and
    names a measure of this group's evidence (otherwise the rule keeps its text and loses the condition)."""
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise Unparseable("answer has no 'rules' list")
    known_texts = {" ".join(r.text.lower().split()) for r in ctx.rules}
    known_conds = {
        (r.condition.measure, r.condition.comparator, round(r.condition.threshold, 6))
        for r in ctx.rules
        if r.condition is not None
    }
    out: list[ProposedRule] = []
    for item in data["rules"]:
        if not isinstance(item, dict) or not str(item.get("text") or "").strip():
            continue
        text = " ".join(str(item["text"]).split())[:400]
        measure, comp = item.get("measure"), item.get("comparator")
        # a measure that is a list or an object (not a name) raised "unhashable type" at the lookup below: the
        # judge blamed the endpoint ("not a valid chat completion") and retried a usable answer
        measure = measure if isinstance(measure, str) else None
        threshold, points = finite_float(item.get("threshold")), finite_float(item.get("points"))
        axis = item.get("axis") if item.get("axis") in AXES else None
        executable = (
            measure in ctx.evidence and comp in COMPARATORS and threshold is not None and points is not None
        )
        per = finite_float(item.get("per"))  # a graded rule's step; a step rule (or nonsense ≤ 0) has none
        per = per if per is not None and per > 0 else None
        if not executable:
            measure = comp = threshold = points = axis = per = None
        else:
            points = min(10.0, max(0.0, points))
            if (measure, comp, round(threshold, 6)) in known_conds:
                continue
        if text.lower() in known_texts:
            continue
        # one tag written as a string is that tag (it was split into its letters); a number or an object is none
        # (it raised "not iterable", retried as if the endpoint had sent no chat completion)
        tags = item.get("tags")
        tags = [tags] if isinstance(tags, str) else tags if isinstance(tags, list) else []
        tags = [str(t) for t in tags if isinstance(t, str | int)][:8]
        out.append(
            ProposedRule(
                text=text,
                tags=tags,
                measure=measure,
                comparator=comp,
                threshold=threshold,
                points=points,
                axis=axis,
                per=per,
            )
        )
        if len(out) == 2:
            break
    if data["rules"] and not out:
        raise Unparseable("none of the proposed rules is usable or new")
    return RuleProposals(rules=out)


# ---------------------------------------------------------------------------------------------- images


def image_part(path: str | Path, group_id: str, what: str, max_side: int | None = None,
               detail: str | None = None) -> dict:
    """An ``image_url`` content part carrying the file as a base64 data URL (PNG or JPEG; any other image, or one
    a viewer would turn or flatten, as hmrcritic reads it: :func:`_as_seen`), its longer side
    scaled down to ``max_side`` px when it is longer (aspect kept, same format), with OpenAI's ``detail`` when
    given (:class:`~hmrcritic.config.JudgeSettings` ``image_max_side`` / ``image_detail``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise JudgeError(f"group {group_id}: cannot read the {what} image {p}: {exc.strerror}") from None
    mime = "image/png" if data.startswith(b"\x89PNG\r\n\x1a\n") else "image/jpeg" if data.startswith(b"\xff\xd8") \
        else None
    data, mime = _as_seen(p, data, mime, f"group {group_id}: the {what} image {p}")
    if max_side is not None:
        data = _scaled_down(data, max_side, mime, f"group {group_id}: the {what} image {p}")
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


def _as_seen(path: Path, data: bytes, mime: str | None, where: str) -> tuple[bytes, str]:
    """The image as hmrcritic reads it (``hmr.data.read_image``: upright by its EXIF orientation, alpha on white,
    16-bit scaled to 8), re-encoded as PNG, when the file itself would show the VLM something else: a WebP/TIFF/BMP
    input (refused before, though the critique read it), a phone photo stored sideways (the keypoints and the
    overlays are upright; a server may not apply EXIF), a transparent or 16-bit PNG. Plain RGB/grey PNG and JPEG
    files (the grids always) go as they are, byte for byte."""
    import io

    from PIL import Image

    if mime is not None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.getexif().get(0x0112, 1) == 1 and im.mode in ("RGB", "L"):
                    return data, mime
        except OSError as exc:  # a truncated or corrupt file: one line for the group, as an unreadable one
            raise JudgeError(f"{where} cannot be decoded: {exc}") from None
    from hmrcritic.errors import InputError
    from hmrcritic.hmr.data import read_image

    try:
        arr = read_image(path)
    except InputError as exc:
        raise JudgeError(f"{where} cannot be decoded: {exc}") from None
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue(), "image/png"


def _scaled_down(data: bytes, max_side: int, mime: str, where: str) -> bytes:
    """``data`` re-encoded with its longer side at ``max_side`` px (Lanczos), or as it is when it fits."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) <= max_side:
                return data
            scale = max_side / max(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            small = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    except OSError as exc:  # a truncated or corrupt file: one line for the group, as an unreadable one
        raise JudgeError(f"{where} cannot be decoded: {exc}") from None
    out = io.BytesIO()
    small.save(out, format="PNG" if mime == "image/png" else "JPEG", **({} if mime == "image/png" else
                                                                        {"quality": 90}))
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- judge


def _retry_after_s(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, or ``Retry-After`` in seconds or a date)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if (ms := finite_float(headers.get("retry-after-ms"))) is not None:
        return max(0.0, ms / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    if (s := finite_float(value)) is not None:
        return max(0.0, s)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" (RFC 5322's "zone unknown") parses naive: HTTP dates are GMT, not local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def _tolerated(body: Any) -> tuple[int, Any] | None:
    """``(status, body)`` to read a 200's JSON body as, or None to read it as it is. Two quirks of real servers:

    * an error object and no completion (OpenRouter reports a provider's failure so, as do some proxies): read
      with the status the error names, or 502 when it names none, so the openai client raises it as that HTTP
      error, with the server's message, and the retry policy applies. Taken as a completion, the client failed
      on it in its own way ("TypeError: 'NoneType' object is not iterable" under json_schema) and the server's
      words were lost. LM Studio answers an address it does not serve so (``{"error": "Unexpected endpoint or
      method. (POST /chat/completions)"}``): a 404, which says where to look, rather than a 502 retried in vain;
    * tool-call ``arguments`` as a JSON object instead of a string (llama.cpp's server has sent them so): the
      client refused the message ("Input should be a valid string") on every retry of every group, and the
      judge never left function calling. The object is what the string would have held;
    * the whole answer in the message's reasoning field (``reasoning_content``, newer vLLM's ``reasoning``) and
      ``content`` null: vLLM's ``--reasoning-parser`` files everything there when the model writes no
      ``</think>`` (thinking turned off in the chat template, a model that answers at once). The client drops that
      field, and every retry of every group failed as "the answer is empty" though the server had sent the
      answer. Read as the content (not when the answer was cut at the output limit: that is all reasoning)."""
    if not isinstance(body, dict):
        return None
    if body.get("error") and not body.get("choices"):
        code = finite_float(body["error"].get("code")) if isinstance(body["error"], dict) else None
        if code is None and "unexpected endpoint" in str(body["error"]).lower():
            code = 404  # LM Studio's answer to an address it does not serve (a base URL without /v1)
        return (int(code) if code is not None and 400 <= code <= 599 else 502), body
    changed = False
    for choice in body.get("choices") if isinstance(body.get("choices"), list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        reasoning = next((message.get(k) for k in ("reasoning_content", "reasoning") if isinstance(message, dict)
                          and isinstance(message.get(k), str) and message[k].strip()), None)
        if (reasoning is not None and not calls and not str(message.get("content") or "").strip()
                and choice.get("finish_reason") != "length"):
            message["content"], changed = reasoning, True
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), dict | list):
                function["arguments"], changed = json.dumps(function["arguments"]), True
    return (200, body) if changed else None


_NOT_JSON = object()


def _assembled(text: str) -> dict | None:
    """The chat completion that a stream of chunks (server-sent events) adds up to, or None when ``text`` is no
    such stream. Some servers and proxies stream although the request did not ask to (a gateway that forces
    ``stream: true``): the client failed on the events as "not JSON", and every group was retried as a 502 and
    failed although each answer was whole. A chunk that is an error object is returned as it is (see
    :func:`_tolerated`)."""
    choices: dict[int, dict] = {}
    head: dict = {}
    for line in text.splitlines():
        if not line.startswith("data:") or (data := line[5:].strip()) == "[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(chunk, dict):
            return None
        if chunk.get("error") and not chunk.get("choices"):
            return chunk
        head = {**head, **{k: chunk[k] for k in ("id", "created", "model", "usage") if chunk.get(k) is not None}}
        for c in chunk.get("choices") or []:
            if not isinstance(c, dict) or not isinstance(delta := c.get("delta") or {}, dict):
                return None
            out = choices.setdefault(int(c.get("index") or 0), {"content": "", "calls": {}, "finish": None,
                                                                "reasoning": ""})
            out["content"] += delta.get("content") or ""
            out["reasoning"] += delta.get("reasoning_content") or delta.get("reasoning") or ""
            out["finish"] = c.get("finish_reason") or out["finish"]
            for call in delta.get("tool_calls") or []:
                have = out["calls"].setdefault(int(call.get("index") or 0), {"id": "", "name": "", "arguments": ""})
                function = call.get("function") or {}
                have["id"] = call.get("id") or have["id"]
                have["name"] += function.get("name") or ""
                args = function.get("arguments") or ""
                have["arguments"] += args if isinstance(args, str) else json.dumps(args)
    if not choices:
        return None
    body = {"id": head.get("id", "chatcmpl-streamed"), "object": "chat.completion", "created": head.get("created", 0),
            "model": head.get("model", ""), "choices": []}
    if head.get("usage"):
        body["usage"] = head["usage"]
    for index, c in sorted(choices.items()):
        message: dict = {"role": "assistant", "content": c["content"] or None}
        if c["reasoning"]:
            message["reasoning_content"] = c["reasoning"]
        if c["calls"]:
            message["tool_calls"] = [{"id": t["id"] or f"call_{i}", "type": "function",
                                      "function": {"name": t["name"], "arguments": t["arguments"]}}
                                     for i, t in sorted(c["calls"].items())]
        body["choices"].append({"index": index, "message": message, "finish_reason": c["finish"] or "stop"})
    return body


def _loopback_host(base_url: str | None) -> str | None:
    """The host of ``base_url`` as an httpx mount pattern writes it, when it is this machine (``localhost``,
    127.0.0.0/8, ``::1``), else None."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(base_url).hostname or "") if base_url else ""
    try:
        loopback = host == "localhost" or host.endswith(".localhost") or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    return (f"[{host}]" if ":" in host else host) if loopback else None


def _http_client(base_url: str | None = None):
    """The openai client's default HTTP client, with :func:`_tolerated` applied to every 200 JSON answer.

    A server on this machine is reached directly, whatever ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` say
    (``NO_PROXY`` is honoured as before for other hosts): through a proxy, ``127.0.0.1`` is the proxy's own
    machine, so a running local vLLM or Ollama was reported as "cannot connect to http://127.0.0.1:8000/v1
    (Connection refused)" (the proxy's refusal, or its 502) and the user went looking for a server that was up."""
    import openai

    host = _loopback_host(base_url)
    mounts = {f"all://{host}": None} if host is not None else None

    class Client(openai.DefaultHttpxClient):
        def send(self, request, **kwargs):
            response = super().send(request, **kwargs)
            if response.status_code != 200 or kwargs.get("stream"):
                return response
            response.read()
            try:
                body = json.loads(response.content)
            except (ValueError, RecursionError):
                body = _NOT_JSON
            streamed = "text/event-stream" in response.headers.get("content-type", "")
            try:  # a stream of odd chunks (an index that is no number) is read as the page it is, below
                whole = _assembled(response.text) if body is _NOT_JSON and streamed else None
            except (TypeError, ValueError, AttributeError, OverflowError):  # OverflowError: an index of Infinity
                # (int(inf)): it came out of critique as a bare traceback
                whole = None
            if whole is not None:
                fixed = _tolerated(whole) or (200, whole)
            elif body is _NOT_JSON:
                # a 200 that is no JSON at all (a proxy's or captive portal's HTML page): the client failed on it
                # as "AttributeError: 'str' object has no attribute 'choices'" and the page's words were lost; as
                # a 502 with that body the error names them (VLMJudge._describe) and is retried as one
                kind = response.headers.get("content-type", "").split(";")[0].strip() or "no content type"
                fixed = (502, f"answered 200 with {kind}, not JSON: {response.text}")
            elif "json" not in response.headers.get("content-type", ""):
                return response
            else:
                fixed = _tolerated(body)
            if fixed is None:
                return response
            response.close()
            drop = ("content-length", "content-encoding", "transfer-encoding")
            headers = [(k, v) for k, v in response.headers.items() if k.lower() not in drop]
            content = fixed[1].encode() if isinstance(fixed[1], str) else json.dumps(fixed[1]).encode()
            return type(response)(fixed[0], headers=headers, content=content, request=request,
                                  history=response.history)

    return Client(mounts=mounts)


class EndpointUnusableError(JudgeError):
    """A group failed for a reason of the endpoint's own, which every other group meets the same way: nothing
    answers at the address (connection refused, a name that does not resolve), the key is refused (401/403), the
    model or path is not served (404/405), the account's quota is spent, or the request is refused whatever its
    form (a 4xx: more images than the server takes per request, ``temperature=0`` refused). A context too small
    for the group, or a body too large (413), is its subclass :class:`GroupTooLargeError`, which stops no batch.

    A batch of groups (:meth:`VLMJudge.critique_many`, ``hmrcritic export``) stops after
    :data:`UNUSABLE_IN_A_ROW` such failures in a row instead of failing every remaining group in turn, each after
    its retries (a 256-group export spent an hour so, to write nothing). Transient failures (timeouts, 429, 5xx,
    unusable answers) stay plain :class:`JudgeError`: their group fails alone. ``endpoint``: the base URL without
    credentials; ``cause``: what is wrong with it, in a few words."""

    endpoint_unusable = True  # what the export checks (duck-typed: it does not import this module)

    def __init__(self, message: str, endpoint: str = "", cause: str = ""):
        super().__init__(message)
        self.endpoint, self.cause = endpoint, cause

    def __reduce__(self):  # pickled with its fields (a pool process's error), not rebuilt from the message alone
        return type(self), (str(self), self.endpoint, self.cause)


class GroupTooLargeError(EndpointUnusableError):
    """The endpoint refuses this group's request for its size: too long for the model's context, or a body over
    the server's limit (HTTP 413). The advice is the same as for every group, but a smaller group (fewer
    hypotheses, fewer rules recalled) may pass, so a batch does not stop for it (``endpoint_unusable`` False): three
    large groups in a row marked every group after them "not tried", those that fit included, and stopping saved
    nothing, as such a group fails at once, without retries. A subclass, as these were raised so at first."""

    endpoint_unusable = False


OPENAI_API = "https://api.openai.com/v1"  # the openai client's default base URL, given by name when none is set

# error codes of a 400 that judged one group's content (a smaller or other group passes): no endpoint failure
_FILTERED = ("content_filter", "content_policy_violation", "invalid_prompt")


def _connect_failure(exc: BaseException) -> str | None:
    """The transport's words when ``exc`` (an ``APIConnectionError``) is a failure to connect at all (connection
    refused, a name that does not resolve: ``ConnectError`` under the openai client), else None. A connection
    dropped mid-answer (a reset, a protocol error) is transient and not one of these."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("ConnectError", "ConnectionRefusedError", "gaierror"):
            return str(exc) or type(exc).__name__
        exc = exc.__cause__ or exc.__context__
    return None


# a TLS handshake's failures that no retry cures (OpenSSL's words): an https address for a plain http server
# (OpenSSL 3.2+ says "record layer failure"), a certificate not trusted or for another host. Others, such as an
# EOF in the handshake (a server or proxy dropping connections under load), may pass on a retry
_TLS_FOR_GOOD = ("wrong version number", "wrong_version_number", "record layer failure", "record_layer_failure",
                 "certificate verify failed", "certificate_verify_failed")


def _tls_for_good(exc: BaseException) -> bool:
    """Is ``exc`` (an ``APIConnectionError``) a TLS handshake that fails the same way on every try?"""
    words = (_connect_failure(exc) or "").lower()
    return any(w in words for w in _TLS_FOR_GOOD)


def _connect_timed_out(exc: BaseException) -> bool:
    """Did ``exc`` (an ``APITimeoutError``) time out before the TCP connection was made (``ConnectTimeout`` under
    the openai client), rather than while waiting for the answer? An address that drops packets (a host that is
    off, a firewall, a VPN down) never completes the handshake: nothing answers there, as with a refused
    connection, and each attempt fails the same way. It was retried as a slow answer and never counted as an
    unusable endpoint, so a batch paid every group's retries. A read timeout (the server took the request and is
    slow) stays transient."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "ConnectTimeout":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _base_url_source(url: str | None) -> str:
    """Where the judge's base URL was set, to name in advice: the variable that holds it
    (:func:`hmrcritic.config.base_url_from_env`), else the settings given in code."""
    from hmrcritic.config import base_url_from_env

    value, name = base_url_from_env()
    if name == "HMRCRITIC_BASE_URL" and value == url:  # also where a command's --base-url puts it
        return "--base-url or HMRCRITIC_BASE_URL"
    return name if name and value == url else "JudgeSettings(base_url=...)"


def _key_source() -> tuple[str | None, list[str]]:
    """``(the variable the judge's key came from or None, the others also set)``, read as
    :func:`hmrcritic.config.api_key` reads them (the first one set and not blank wins), to name in a 401/403's
    advice, never the key itself."""
    import os

    from hmrcritic.config import API_KEY_VARS

    set_ = [v for v in API_KEY_VARS if (os.environ.get(v) or "").strip()]
    return (set_[0], set_[1:]) if set_ else (None, [])


def _key_advice(status: int, source: tuple[str | None, list[str]]) -> str:
    """What to change after a 401/403: the variable the key was read from (which one wins, where both are set),
    or both names where none is set. "(the key is refused)" alone left the user to guess which of the two
    variables was sent, and a fixed OPENAI_API_KEY stayed refused behind a stale HMRCRITIC_API_KEY."""
    name, others = source
    if name is None:
        return ": no key was sent (HMRCRITIC_API_KEY and OPENAI_API_KEY are both unset); set HMRCRITIC_API_KEY to " \
               "the endpoint's key"
    shadowed = f" (it wins over {', '.join(others)})" if others else ""
    what = "a valid key for this endpoint" if status == 401 else "a key allowed this model and endpoint"
    return f": the key sent is the one in {name}{shadowed}; set {what} there"


def _clip(text: str | None, most: int) -> str:
    """``text`` of at most ``most`` characters, its middle left out where longer: an address keeps its host and
    the path asked (``/chat/completions``), and the advice said after it stays within the 300-character line."""
    text = text or ""
    return text if len(text) <= most else f"{text[:most - 20]}...{text[-17:]}"


def _too_long(message: str) -> bool:
    """Is this 400 (422) a context overflow? vLLM says "This model's maximum context length is ..." when it counts
    the text alone, and "The decoder prompt (length 8825) is longer than the maximum model length of 8192" once the
    images are counted in (the usual form for a VLM: a group's grids are most of its prompt); TGI "`inputs` tokens +
    `max_new_tokens` must be <= 4096" (a 422), llama.cpp "exceeds the available context size" (a 500 before its
    400, and "Context size has been exceeded", LM Studio's MLX models' words too), SGLang "longer than the model's
    context length". All but the first were resent in two simpler forms and reported without advice."""
    low = message.lower()
    return any(words in low for words in ("maximum context length", "context_length_exceeded", "context window",
                                          "longer than the maximum model length", "tokens + `max_new_tokens`",
                                          "exceeds the available context size", "model's context length",
                                          "context size has been exceeded"))


def _model_missing(message: str, model: str) -> bool:
    """Does this 404 say the model is not served (rather than the address)? It names the model asked for, or
    says "model ... not found / does not exist" (a path a server echoes, "/models/v1/...", is not that)."""
    low = message.lower()
    return bool(len(model) >= 4 and model.lower() in low) or re.search(
        r"\bmodel\b.{0,80}?\b(?:not found|does not exist|not exist)", low) is not None


def _request_hint(message: str, images: int) -> str:
    """Advice for a 400 every request of this shape gets again, or "". vLLM's context overflow ("This model's
    maximum context length is 4096 tokens. However, you requested ...") and its images-per-request limit ("At
    most 1 image(s) may be provided in one request/prompt", older vLLM's default, ``--limit-mm-per-prompt
    image=1``) were reported as a bare "endpoint rejected the request", and first resent in two simpler forms."""
    low = message.lower()
    if _too_long(low):
        return ("too long for the model's context: fewer hypotheses per group (--num-generations), smaller images "
                "(HMRCRITIC_VLM_IMAGE_MAX_SIDE) or a larger context (vLLM --max-model-len)")
    if m := re.search(r"at most (\d+) image\(s\) may be provided", low):
        return (f"the server takes at most {m.group(1)} image(s) per request, the judge sends {images}: start vLLM "
                f"with --limit-mm-per-prompt image={images} (newer vLLM: '{{\"image\": {images}}}')")
    if "temperature" in low and ("unsupported" in low or "not support" in low):
        return "the model refuses temperature=0, which the judge sends for repeatable scores: use another model"
    return ""


class _NotSent(Exception):
    """A group of :meth:`VLMJudge.critique_many` not sent: the endpoint counts as unusable (``why``, the failure
    that stopped the batch) or the batch was cancelled (``why`` None)."""

    def __init__(self, why: EndpointUnusableError | None):
        super().__init__()
        self.why = why


# said after a 404 that names the model: the address is right, the model name is not one the server serves
_MODEL_ADVICE = ("; give the name of a model it serves (--vlm-model or HMRCRITIC_VLM_MODEL; `hmrcritic doctor --probe` "
                 "lists them)")

# said after "no answer within N s": every other endpoint failure names what to change (a slow model, a large group
# or a cold start needs a longer wait)
_SLOW_ADVICE = "; a slow server or a large group: raise HMRCRITIC_VLM_TIMEOUT (seconds)"


class _Unbuildable(Exception):
    """Building a request's prompt failed (:meth:`VLMJudge._built`): the group fails at once, nothing sent."""


class _CutOff(Exception):
    """The answer stopped where a retry would stop it again: the output-token limit, a refusal, a content filter."""


class VLMJudge:
    """A :class:`~hmrcritic.agent.judges.Judge` backed by an OpenAI-compatible chat endpoint with vision.

    ``settings`` defaults to :class:`JudgeSettings` from the environment. Backoff: retry k (k = 0, 1, ...)
    waits ``min(backoff_max_s, backoff_base_s * 2**k)`` scaled by a jitter in [0.5, 1], or the server's
    ``Retry-After`` when larger (capped at ``max_retry_after_s``). A group therefore fails after at most
    ``(3 + max_retries)`` requests, each given ``timeout_s`` (and a 0.25 s grace): the ``1 + max_retries``
    attempts, and at most two more when the endpoint refuses a request form (json_schema, then function calling:
    the same request is resent in the next simpler form, not counted as an attempt) — plus the backoffs, and
    any wait for a free slot of the endpoint's semaphore. ``send_input_image`` adds the raw input image to
    the overlay and side grids (off by default: the overlay grid already shows it).
    """

    name = "vlm"

    def __init__(
        self,
        settings: JudgeSettings | None = None,
        *,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 120.0,
        send_input_image: bool = False,
    ):
        from langchain_openai import ChatOpenAI  # lazy: the builtin path never imports it
        from pydantic import SecretStr

        self.settings = settings or JudgeSettings()
        check_base_url(self.settings.base_url)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.send_input_image = send_input_image
        key = api_key()  # refuses a key that cannot go into an HTTP header, without showing it
        self._key_source = _key_source()  # the variable the key came from, read with it: a 401/403 names it
        if not key and self.settings.base_url is None:  # retrying the OpenAI endpoint without a key cannot work
            # every command with --judge takes --base-url (session 30): named first, as the flag a user is at
            raise InputError("the VLM judge has no endpoint and no key: give --base-url URL (or set "
                             "HMRCRITIC_BASE_URL) for a local server (vLLM, Ollama), or set HMRCRITIC_API_KEY (or "
                             "OPENAI_API_KEY) for OpenAI")
        register_secret(key)
        guard_langsmith()
        self._secret = SecretStr(key or "")  # for scrubbing only; its repr is masked
        self._llm = ChatOpenAI(
            model=self.settings.model,
            # by name when none is set: given None, ChatOpenAI takes LANGSMITH_GATEWAY (LangSmith's gateway, sent
            # the OpenAI key) or the openai client's variables on its own, past config.BASE_URL_VARS
            base_url=self.settings.base_url or OPENAI_API,
            api_key=SecretStr(key or NO_KEY_PLACEHOLDER),
            temperature=0,
            timeout=self.settings.timeout_s,
            max_retries=0,
            http_client=_http_client(self.settings.base_url),
            **({"max_tokens": int(self.settings.max_tokens)} if self.settings.max_tokens is not None else {}),
        )
        self._mode = MODES[0]
        self._mode_lock = threading.Lock()
        self._refusals = dict.fromkeys(MODES, 0)  # refusals of each form that stand (see _degrade, _put_back)
        self._warned: set[str] = set()  # forms whose standing refusal was warned of (_confirm)
        self._runnables: dict[tuple[str, str], Any] = {}
        self._semaphore = endpoint_semaphore(self.settings.base_url, self.settings.max_concurrency)

    def __repr__(self) -> str:
        s = self.settings
        return f"VLMJudge(model={s.model!r}, base_url={redact_url(s.base_url)!r}, mode={self._mode!r})"

    @property
    def mode(self) -> str:
        """The structured-output method in use (drops to a simpler one when the endpoint rejects it)."""
        return self._mode

    # -- public API -----------------------------------------------------------------------------------

    def critique(self, ctx: JudgeContext) -> GroupCritique:
        """Score every hypothesis of the group in one call; raise JudgeError after the retries."""
        self._check_context(ctx)
        images = self._images(ctx)
        # an id as the prompt shows it (no whitespace, at most 80 characters) stands for the rule's own id: an
        # imported rule "knee rule 1" was cited as "kneerule1", dropped, and so never counted as applied
        known_rules = {prompts.shown_rule_id(r.rule_id): r.rule_id for r in ctx.rules}
        known_rules.update({r.rule_id: r.rule_id for r in ctx.rules})

        def validate(data: Any) -> GroupCritique:
            crit = normalise_critique(data, ctx.num_hypotheses)
            # only ids that were in the prompt: the graph counts rule uses from this list
            crit.rules_applied = list(dict.fromkeys(known_rules[r] for r in crit.rules_applied if r in known_rules))
            # the endpoint's words go on to scores.json, reports, traces, memory and exports: a key it quotes back
            # (an echoing proxy) is masked here, once
            crit.summary = clean_text(scrub(crit.summary))
            for sc in crit.scores:
                sc.rationale = clean_text(scrub(sc.rationale))
            return crit

        def build(mode: str, retry_reason: str) -> list:
            text = prompts.critique_text(
                ctx, images=[kind for kind, _ in images], text_mode=mode == "text", retry_reason=retry_reason
            )
            return self._messages(prompts.CRITIQUE_SYSTEM, text, [part for _, part in images])

        return self._call(ctx.group_id, GroupCritique, build, validate)

    def propose_rules(self, ctx: JudgeContext, mistakes: list[Mistake]) -> RuleProposals:
        """Rule mining: show where the ranking disagreed with the truth and ask for at most two new rules."""
        self._check_context(ctx)
        images = self._images(ctx)

        def build(mode: str, retry_reason: str) -> list:
            text = prompts.rule_mining_text(ctx, mistakes, text_mode=mode == "text")
            if retry_reason:
                text += f"\n\nYour previous answer could not be used ({retry_reason}). Answer again."
            return self._messages(prompts.RULES_SYSTEM, text, [part for _, part in images])

        def validate(data: Any) -> RuleProposals:
            proposals = normalise_proposals(data, ctx)
            for rule in proposals.rules:  # rule texts are stored in the memory and exported with it
                rule.text = clean_text(scrub(rule.text))
            return proposals

        return self._call(ctx.group_id, RuleProposals, build, validate)

    def critique_many(
        self,
        ctxs: Sequence[JudgeContext],
        *,
        return_exceptions: bool = False,
        on_done: Callable[[int, GroupCritique | JudgeError], None] | None = None,
        _stop: threading.Event | None = None,
    ) -> list[GroupCritique | JudgeError]:
        """Critique many groups on a thread pool bounded by ``max_concurrency``; results in input order.

        With ``return_exceptions`` a failed group yields its JudgeError in place; otherwise the first failure
        cancels the groups not yet started and is raised. ``on_done(i, result)`` reports progress.

        After :data:`UNUSABLE_IN_A_ROW` groups in a row failed with :class:`EndpointUnusableError` (nothing
        answers, the key or model refused, every request refused) and none was scored in between, the groups not
        yet started are not sent: each gets an :class:`EndpointUnusableError` saying it was not attempted, instead
        of failing the same way after its retries. They first wait for the groups still in flight (which the batch
        waits for anyway): one of those scored shows the endpoint answers again, and they are sent after all.
        """
        results: list[Any] = [None] * len(ctxs)
        if not ctxs:
            return results
        workers = max(1, min(self.settings.max_concurrency, len(ctxs)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlm-judge")
        failure: JudgeError | None = None
        # Under ``cond``: in_a_row and tripped are set by this thread only, in_flight is raised by a worker taking
        # a group and lowered here as its result is read. A worker taking a group after the stop waits for the
        # groups in flight: cancelled at the stop, the rest were all "not tried" though one of those was then
        # scored, the endpoint back.
        cond = threading.Condition()
        in_a_row, tripped, in_flight, closing = 0, None, 0, False

        def not_attempted(i: int, why: EndpointUnusableError) -> EndpointUnusableError:
            return EndpointUnusableError(
                f"VLM judge did not try group {ctxs[i].group_id}: {UNUSABLE_IN_A_ROW} groups in a row failed as the "
                f"endpoint {why.endpoint} is unusable ({why.cause}); fix it and critique the group again",
                why.endpoint, why.cause)

        def one(ctx: JudgeContext) -> GroupCritique:
            nonlocal in_flight
            with cond:
                cond.wait_for(lambda: tripped is None or in_flight == 0 or closing)
                if tripped is not None or closing or (_stop is not None and _stop.is_set()):
                    raise _NotSent(tripped)
                in_flight += 1
            return self.critique(ctx)

        try:
            futures = {pool.submit(one, c): i for i, c in enumerate(ctxs)}
            for fut in as_completed(futures):
                i = futures[fut]
                if fut.cancelled():  # after a failure without return_exceptions: raised below
                    continue
                with cond:
                    try:
                        results[i] = fut.result()
                        in_flight, in_a_row, tripped = in_flight - 1, 0, None
                    except _NotSent as exc:
                        gid = ctxs[i].group_id
                        results[i] = (not_attempted(i, exc.why) if exc.why is not None else
                                      JudgeError(f"VLM judge did not try group {gid}: the batch was cancelled"))
                        if not return_exceptions and failure is None:
                            failure = results[i]
                            for other in futures:
                                other.cancel()
                    except Exception as exc:  # JudgeError, or anything else: that group fails, the others go on
                        in_flight -= 1
                        if not isinstance(exc, JudgeError):
                            exc = JudgeError(f"group {ctxs[i].group_id}: {type(exc).__name__}: {scrub(exc)}")
                        results[i] = exc
                        if not return_exceptions and failure is None:
                            failure = exc
                            for other in futures:
                                other.cancel()
                        if getattr(exc, "endpoint_unusable", False) is True:  # not a GroupTooLargeError
                            in_a_row += 1
                            if in_a_row >= UNUSABLE_IN_A_ROW and tripped is None:
                                tripped = exc
                                log.warning("vlm judge: %d groups in a row failed because the endpoint %s is "
                                            "unusable (%s); the groups not started are not sent", in_a_row,
                                            exc.endpoint, exc.cause)
                    cond.notify_all()
                if on_done is not None and results[i] is not None:
                    on_done(i, results[i])
        finally:
            with cond:  # an on_done that raised, a Ctrl-C: no worker may wait on counts nobody updates now
                closing = True
                cond.notify_all()
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure
        return results

    async def acritique(self, ctx: JudgeContext) -> GroupCritique:
        """Async form of :meth:`critique` (runs in a worker thread; the endpoint semaphore still applies)."""
        return await asyncio.to_thread(self.critique, ctx)

    async def acritique_many(
        self, ctxs: Sequence[JudgeContext], **kwargs
    ) -> list[GroupCritique | JudgeError]:
        """Async form of :meth:`critique_many`. Cancelled (``asyncio.wait_for``'s timeout, a task's ``cancel``),
        it sends no more groups: the thread cannot be interrupted, and went on sending every group of the batch
        while ``asyncio.run`` waited for it at its exit."""
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self.critique_many, ctxs, _stop=stop, **kwargs)
        except asyncio.CancelledError:
            stop.set()
            raise

    def check_endpoint(self) -> dict:
        """Is the endpoint reachable and does it serve our model? (``GET /models``; for ``doctor``.)

        Returns ``{"ok", "base_url", "model", "models", "error"}``; never raises, never shows the key.
        """
        import openai

        out = {"ok": False, "base_url": redact_url(self.settings.base_url), "model": self.settings.model, "models": []}
        try:
            out["models"] = sorted(m.id for m in self._llm.root_client.models.list())
        except openai.APIConnectionError as exc:  # the client's own words are "Connection error." and no more:
            # where, why (refused, no such host) and what to change, as a critique says them
            reason, advice, _ = self._unreachable(exc)
            out["error"] = self._scrub(reason, advice)
            return out
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out["error"] = self._describe(exc)
            return out
        out["ok"] = self.settings.model in out["models"] or not out["models"]
        out["error"] = "" if out["ok"] else f"model {self.settings.model!r} is not served here"
        return out

    # -- internals ------------------------------------------------------------------------------------

    @staticmethod
    def _check_context(ctx: JudgeContext) -> None:
        """A table that disagrees with N would make the prompt lie about the hypotheses: refuse it."""
        n = ctx.num_hypotheses
        for name, values in ctx.evidence.items():
            if len(values) != n:
                raise JudgeError(
                    f"group {ctx.group_id}: evidence {name!r} has {len(values)} values, expected {n}"
                )
        if len(ctx.prototypes) > n:
            raise JudgeError(
                f"group {ctx.group_id}: prototypes given for {len(ctx.prototypes)} hypotheses of {n}"
            )

    def _images(self, ctx: JudgeContext) -> list[tuple[str, dict]]:
        wanted = [("overlay", ctx.overlay_grid_path), ("side", ctx.side_grid_path)]
        if self.send_input_image:
            wanted.append(("image", ctx.image_path))
        what = {"overlay": "overlay grid", "side": "side-view grid", "image": "input"}
        return [(kind, image_part(path, ctx.group_id, what[kind], self.settings.image_max_side,
                                  self.settings.image_detail)) for kind, path in wanted if path]

    @staticmethod
    def _messages(system: str, text: str, image_parts: list[dict]) -> list:
        from langchain_core.messages import HumanMessage, SystemMessage

        return [
            SystemMessage(content=system),
            HumanMessage(content=[{"type": "text", "text": text}, *image_parts]),
        ]

    def _runnable(self, schema: type[BaseModel], mode: str):
        """The chat model bound to one structured-output method, returning the raw message too.

        For ``json_schema`` the model's JSON schema is passed as a named dict rather than the class: with
        the class the openai client validates the answer strictly and throws the text away, whereas we want
        to see it (a 0-100 answer or JSON in prose is still usable). The request on the wire is the same
        ``response_format: {type: json_schema, json_schema: {name: GroupCritique, schema: ...}}``.
        """
        key = (schema.__name__, mode)
        if key not in self._runnables:
            if mode == "text":
                self._runnables[key] = self._llm
            elif mode == "json_schema":
                doc = (schema.__doc__ or schema.__name__).strip().splitlines()[0]
                spec = {"name": schema.__name__, "description": doc, "schema": schema.model_json_schema()}
                self._runnables[key] = self._llm.with_structured_output(spec, method=mode, include_raw=True)
            else:
                self._runnables[key] = self._llm.with_structured_output(schema, method=mode, include_raw=True)
        return self._runnables[key]

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1``: exponential, capped at ``backoff_max_s``, jittered. The
        exponent stops at 60 (any base past its cap by then): ``2 ** (attempt - 1)`` as a float factor overflowed
        past ~1,024 attempts (a large HMRCRITIC_VLM_RETRIES), failing the group with a bare OverflowError."""
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempt - 1, 60)) * random.uniform(0.5, 1.0)

    def _scrub(self, text: str, advice: str = "") -> str:
        """One line, bounded, with the key (and anything else secret-looking, see :mod:`hmrcritic.redact`)
        removed, and printable: an endpoint's error body is untrusted text that ends up on a terminal (the CLI's
        error line, retry warnings, ``doctor``, ``trace``), and its escape sequences (``ESC]0;…BEL`` retitling
        the window, ``ESC[2J`` clearing it, a bidi override reversing what follows) passed through, as
        ``split()`` only takes whitespace out. ``advice`` (what to change) follows ``text`` and is kept whole: the
        cut takes ``text``'s end (an address, a server's words) instead; behind a long base URL the cut took the
        advice, and the line named no setting."""
        text, advice = (printable(" ".join(self._unsecret(part).split())) for part in (text, advice))
        if advice[:1] in (";", ":") and text.endswith(".") and not text.endswith(".."):
            text = text[:-1]  # a server's sentence ("The model `x` does not exist.") read ".; give the name ..."
        room = max(3, 300 - len(advice))
        return (text if len(text) <= room else text[:room - 3] + "...") + advice

    def _rate_advice(self) -> str:
        """What to change after a group's retries all met a 429: the two settings that bear on it, with their
        values in force. The line ended at the server's "rate limit reached" and named no setting, although the
        judge's own concurrency (per process) and retries decide how hard it presses the endpoint and how long it
        waits it out (the server's Retry-After is honoured between tries)."""
        s = self.settings
        return (f"; the endpoint kept limiting the rate: send fewer requests at once (HMRCRITIC_VLM_CONCURRENCY, now "
                f"{s.max_concurrency}) or allow more retries (HMRCRITIC_VLM_RETRIES, now {s.max_retries})")

    def _address(self) -> str:
        """The address the judge's client calls, without credentials: the base URL, else "the OpenAI API"."""
        return (redact_url(self.settings.base_url) or "") if self.settings.base_url else "the OpenAI API"

    def _unreachable(self, exc: BaseException) -> tuple[str, str, str]:
        """``(reason, advice, unusable)`` for an ``APIConnectionError`` (``APITimeoutError`` among them); ``unusable``
        is "" for a connection dropped mid-answer or an answer too slow (transient), else what is wrong with the
        endpoint (see :func:`_connect_failure`, :func:`_connect_timed_out`)."""
        import openai

        timeout = self.settings.timeout_s
        address = _clip(self._address(), 80)
        if _connect_timed_out(exc):
            # the handshake never completed: said as what happened ("nothing answered ... within"), not as a refusal
            reason, words, tls = f"nothing answered at {address} within {timeout:g} s", "connect timeout", False
            unusable = f"nothing answered there within {timeout:g} s"
            ask = "is a server running there, reachable from this machine (no firewall dropping the packets)?"
        else:
            if isinstance(exc, openai.APITimeoutError):  # connected, then no answer in time (doctor's GET /models):
                # "cannot connect" sent the user looking for a server that was up and slow
                return f"no answer from {address} within {timeout:g} s", "", ""
            reason = f"cannot connect to {address}"  # the transport's words follow
            if (words := _connect_failure(exc)) is None:
                return reason, "", ""
            # a TLS handshake that fails is a ConnectError too: something answers, and the stop's line
            # ("nothing answers there") sent the user to restart a server that was running
            tls = any(w in words.lower() for w in ("ssl", "certificate", "tls"))
            tls_cause = "an https address for a plain http server, or a certificate not trusted"
            unusable = f"the TLS handshake fails ({tls_cause})" if tls else "nothing answers there"
            ask = f"{tls_cause}?" if tls else "is a server running there?"
        if self.settings.base_url:
            # what to change, as for every other unusable endpoint: "Connection refused" alone (after the
            # retries) left the user to guess that no server runs at the address, or which setting holds it
            return (f"{reason} ({words})", f": {ask} Else correct the address "
                    f"({_base_url_source(self.settings.base_url)})", unusable)
        # no base URL: OpenAI's API. "cannot connect to the default OpenAI endpoint" had no advice, on an offline
        # machine or with a local server meant
        online = "" if tls else " (is this machine online?)"
        return (f"{reason} ({words})", f": no base URL is set, so the judge called OpenAI's API{online}; for a "
                "local server (vLLM, Ollama) set HMRCRITIC_BASE_URL", unusable)

    def _unsecret(self, text: str) -> str:
        """``text`` with the key masked, whole: before any cut, so that no part of a key is left to show."""
        if secret := self._secret.get_secret_value():
            text = text.replace(secret, "***")
        return scrub(text)

    def _describe(self, exc: Exception) -> str:
        """``HTTP <status>: <the server's message>`` (``HTTP <status>`` alone when it sent none). A body that is not
        an OpenAI error object (Ollama's "404 page not found", a proxy's HTML page, ``{"error": "<text>"}``,
        FastAPI's ``{"detail": ...}``) stays out of the client's message ("Error code: 502"), so its words, without
        markup, are added: they were the only clue and were dropped."""
        status = getattr(exc, "status_code", None)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        body = getattr(exc, "body", None)
        if isinstance(body, str) and body.strip() and body.strip() not in message:
            # masked before the cut: a key the body quotes across the 200th character left its first part in view
            message = f"{message} - {' '.join(re.sub(r'<[^>]*>', ' ', self._unsecret(body)).split())[:200]}"
        elif isinstance(body, dict | list) and body and message == f"Error code: {status}":
            # JSON the client found no message in: FastAPI's {"detail": ...} (its validation errors a list), an
            # error object without "message". The line was a bare "HTTP 400: Error code: 400", and such a 400
            # stops a batch as the endpoint's fault without a word of the server's on why
            words = body.get("detail", body.get("error", body)) if isinstance(body, dict) else body
            words = words if isinstance(words, str) else json.dumps(words, ensure_ascii=False, default=str)
            message = f"{message} - {' '.join(self._unsecret(words).split())[:200]}"
        if not status:
            return self._scrub(f"{type(exc).__name__}: {message}")
        # the client's own "Error code: 401" prefix said the status a second time after ours ("HTTP 401: Error
        # code: 401 - Incorrect API key provided"): dropped, the server's words follow the status once
        words = re.sub(rf"^Error code: {status}\b(?:\s*-\s*)?", "", message, count=1).strip()
        return self._scrub(f"HTTP {status}: {words}" if words else f"HTTP {status}")

    @staticmethod
    def _where(exc: Exception) -> str:
        """Where a 404/405 came from, first (the message is cut at 300 characters): the URL asked, or the
        redirect that led there. A base URL without ``/v1`` (Ollama's ``http://host:11434``) or one that
        redirects (http to https: the client follows a 301 with a GET) was reported as a bare "HTTP 404" or
        "HTTP 405" that named no address. A long URL loses its middle here: whole, it pushed the advice after it
        past the cut."""
        response = getattr(exc, "response", None)
        url = _clip(redact_url(str(getattr(getattr(response, "request", None), "url", "") or "?")), 80)
        history = getattr(response, "history", None) or []
        if history:
            start = _clip(redact_url(str(history[0].request.url)), 50)
            url = _clip(url, 50)
            as_get = ", which a redirected POST reaches as a GET" if history[0].status_code in (301, 302, 303) else ""
            return f"{start} redirected to {url}{as_get}: set HMRCRITIC_BASE_URL to the address it redirects to; "
        return (f"at {url} (OpenAI-compatible servers answer under /v1, e.g. http://localhost:11434/v1 for "
                "Ollama: check HMRCRITIC_BASE_URL, and the model name): ")

    def _degrade(self, failed_mode: str, own: dict) -> bool:
        """Step down from a structured-output method the endpoint rejected. False when none is left.

        The shared form is the most capable one no standing refusal is against: each refusal counts against its
        form (``_refusals``) and is listed in ``own``, the calling request's record, so that :meth:`_put_back` can
        withdraw that request's refusals alone. Counting (not a moved-or-not flag) keeps the outcome independent
        of the order in which threads' refusals arrive."""
        pos = MODES.index(failed_mode)
        if pos + 1 >= len(MODES):
            return False
        with self._mode_lock:
            self._refusals[failed_mode] += 1
            own.setdefault("refused", []).append(failed_mode)
            # at INFO: whether the form or the request is at fault is not known yet. The warning waits for the
            # call's end (_confirm): said here, "refused json_schema requests; sending function_calling from now
            # on" and the same for text preceded the error of a request refused in every form, which showed the
            # forms were not at fault and put the mode back
            self._settle("the endpoint refused a %s request; trying %s", failed_mode)
        return True

    def _confirm(self, own: dict) -> None:
        """Warn of this call's step-downs that stand as it ends (``own``, see :meth:`_degrade`; those of a request
        refused in every form were withdrawn by :meth:`_put_back`): the simpler form answered, or the call failed
        for another reason and the refusal stays counted, so the judge does send the simpler form from now on. Once
        per form for the judge (a standing refusal is never withdrawn later), not once per group or thread."""
        refused = own.pop("refused", [])
        if not refused:
            return
        with self._mode_lock:
            new = [form for form in dict.fromkeys(refused) if form not in self._warned]
            self._warned.update(new)
        if new:  # a CLI user sees warnings only: at INFO they never learnt the judge had stepped down
            log.warning("vlm judge: the endpoint refused %s requests; sending %s from now on", " and ".join(new),
                        MODES[max(MODES.index(form) for form in refused) + 1])

    def _put_back(self, own: dict) -> None:
        """Withdraw this request's refusals (``own``, see :meth:`_degrade`) after it was refused in every form: the
        request, not the forms, was at fault. Another call's refusals stand: a request refused in every form put
        the shared mode back on the form it had started in, undoing the step-down another thread had made on its own
        refusal (every later group paid that refused request again), and a first fix that undid only a request's
        own steps "unless the mode moved since" left the form on text for good when a refusal of json_schema
        arrived between them."""
        with self._mode_lock:
            for form in own.pop("refused", []):
                self._refusals[form] -= 1
            self._settle("a request was refused in every form%s; using %s again", "")

    def _settle(self, message: str, what: str) -> None:
        """Set the shared mode to the most capable form without a standing refusal (under ``_mode_lock``); said at
        INFO (what a user is warned of waits for the call's end: :meth:`_confirm`)."""
        mode = next((m for m in MODES[:-1] if self._refusals[m] == 0), MODES[-1])
        if mode != self._mode:
            self._mode = mode
            log.info("vlm judge: " + message, what, mode)

    def _check_complete(self, result: Any) -> None:
        """Raise :class:`_CutOff` when the endpoint stopped the answer at its output-token limit
        (``finish_reason == "length"``): the JSON is cut mid-way, and retrying gives the same cut. Likewise for a
        refusal and a content filter's stop."""
        raw = result.get("raw") if isinstance(result, dict) else result
        meta = getattr(raw, "response_metadata", None) or {}
        # a refusal (OpenAI's ``message.refusal``) or the provider's content filter (Azure, OpenAI) ends the answer
        # the same way: each was retried as "the answer is empty", a paid call for the same refusal each time
        if refusal := (getattr(raw, "additional_kwargs", None) or {}).get("refusal"):
            raise _CutOff(f"the model refused to answer: {refusal}")
        if meta.get("finish_reason") == "content_filter":
            raise _CutOff("the endpoint's content filter stopped the answer (finish_reason=content_filter)")
        if meta.get("finish_reason") != "length":
            return
        usage = getattr(raw, "usage_metadata", None) or {}
        raise _CutOff(self._cut_off_reason(usage.get("output_tokens")))

    def _cut_off_reason(self, tokens: int | None) -> str:
        cap = self.settings.max_tokens
        return ("the answer was cut off at the endpoint's output limit (finish_reason=length"
                + (f", {tokens} tokens" if tokens else "") + "); "
                + (f"raise HMRCRITIC_VLM_MAX_TOKENS (now {cap})" if cap else "set HMRCRITIC_VLM_MAX_TOKENS higher "
                   "than the server's default (Ollama: also a larger num_ctx)")
                + " or critique fewer hypotheses per group")

    @staticmethod
    def _payload(result: Any) -> Any:
        """The structured data of an answer: tool-call arguments, or JSON found in text.

        The tool call's arguments as the model wrote them, not the object langchain validated from them
        (``result["parsed"]``): pydantic's lax mode reads ``true`` as 1, so under function calling an
        ``"overall": true`` was taken as a score of 1 and ``"index": true`` as hypothesis 1, which
        :func:`normalise_critique` refuses (as in the other modes) when it sees the arguments themselves."""
        raw = result["raw"] if isinstance(result, dict) and "raw" in result else result
        tool_calls = getattr(raw, "tool_calls", None) or []
        if tool_calls:
            return tool_calls[0].get("args")
        invalid = getattr(raw, "invalid_tool_calls", None) or []
        if invalid:
            return extract_json(str(invalid[0].get("args") or ""))
        content = getattr(raw, "content", "")
        if isinstance(content, list):
            content = "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content)
        text = _answer_text(str(content or ""))
        if not text.strip():
            # said as it is, not as "no JSON object in the answer": a model that thinks until its output limit
            # leaves nothing after its reasoning (an answer filed whole in the reasoning field is read: _tolerated)
            raise Unparseable("the answer is empty" + (" after the model's reasoning" if content else ""))
        return extract_json(text)

    @staticmethod
    def _whole_answer(completion: Any, validate) -> Any:
        """``validate``'s reading of the content of a completion the openai client refused for its
        ``finish_reason == "length"`` (json_schema mode: ``chat.completions.parse``), or None when it is not a
        usable answer (then it really was cut). The rule of the other modes, where only an unusable answer is
        blamed on the limit (:meth:`_check_complete` runs after the answer is read)."""
        try:
            message = completion.choices[0].message
            if getattr(message, "refusal", None):
                return None
            text = _answer_text(str(message.content or ""))
            return validate(extract_json(text)) if text.strip() else None
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # Unparseable is a ValueError
            return None

    @staticmethod
    def _built(build, mode: str, retry_reason: str) -> list:
        """The request's messages; :class:`_Unbuildable` when building the prompt itself fails (bad data in the
        group's context, a bug): nothing was sent, and the same data fails the same way on every try. Such a
        ValueError/TypeError/KeyError was taken for a "malformed answer" of the endpoint's and retried with backoff
        (and the model asked to fix "the previous answer"). A JudgeError (an image that cannot be read) is already
        the group's one line, and an API error (raised by a ``build`` that sends, as tests' do) the endpoint's:
        both go on as they are."""
        import openai

        try:
            return build(mode, retry_reason)
        except (JudgeError, openai.OpenAIError):
            raise
        except Exception as exc:  # noqa: BLE001 - told as the group's failure by _call
            log.debug("vlm judge: building the prompt failed", exc_info=True)
            raise _Unbuildable(f"{type(exc).__name__}: {exc}") from None

    def _call(self, group_id: str, schema: type[BaseModel], build, validate):
        """One group's request with the retry policy (:meth:`_tries`); its step-downs that stand are warned of as
        it ends (:meth:`_confirm`), when it is known whether the form or the request was at fault."""
        own: dict = {}  # this call's own step-downs of the shared mode (_degrade), which it may undo (_put_back)
        try:
            return self._tries(group_id, schema, build, validate, own)
        finally:
            self._confirm(own)

    def _tries(self, group_id: str, schema: type[BaseModel], build, validate, own: dict):
        import openai

        attempts = 1 + max(0, int(self.settings.max_retries))
        attempt, retry_reason, reason = 0, "", ""
        stepped = 0  # step-downs in this call: at most one per simpler form, whatever other threads do to the mode
        images = 0
        # after an answer that could not be used, the prompt spells out the answer's shape (as text mode's does) in
        # every form: under json_schema and function calling the shape travels only in the request's schema, which
        # a server that ignores response_format (a proxy dropping it, an older local server) never shows the model.
        # Each retry then asked it to "answer again" in a format it had not been told, and got the same prose
        spell_out = False
        while True:
            mode = self._mode
            wait_hint: float | None = None
            fatal = False
            advice = ""  # what to change, said after ``reason`` and kept whole when the line is cut (_scrub)
            unusable = ""  # what is wrong with the endpoint itself, when that is why this attempt failed
            too_large = False  # ... for this group's size only: a smaller one may pass
            rate_limited = False  # a 429 that a wait may cure (not a spent quota): said with its settings at the end
            server_failed = False  # a 5xx: likewise, what to look at once the retries are spent
            no_json = False  # an answer without JSON: likewise (the model does not follow the format asked)
            try:
                messages = self._built(build, "text" if spell_out else mode, retry_reason)
                images = sum(1 for part in getattr(messages[-1], "content", None) or []
                             if isinstance(part, dict) and part.get("type") == "image_url")
                with self._semaphore:
                    result = invoke_within(self._runnable(schema, mode), messages, self.settings.timeout_s)
                try:
                    return validate(self._payload(result))
                except Unparseable:  # only an unusable answer is blamed on the cut (JSON modes often pad a
                    self._check_complete(result)  # complete answer with whitespace up to the limit)
                    raise
            except _Unbuildable as exc:  # nothing was sent: not the endpoint's failure, and no retry cures it
                raise JudgeError(self._scrub(f"VLM judge failed for group {group_id}: cannot build the prompt "
                                             f"({exc}); nothing was sent")) from None
            except _CutOff as exc:  # at temperature 0 a retry is cut at the same place
                reason, fatal = str(exc), True
            except openai.LengthFinishReasonError as exc:  # the same, seen by the client's json_schema parsing
                # which raises it on any finish_reason "length", before the answer is read: a whole answer padded
                # with whitespace to the limit (guided decoding does so) failed the group. Used when it is whole
                completion = getattr(exc, "completion", None)
                if (whole := self._whole_answer(completion, validate)) is not None:
                    return whole
                usage = getattr(completion, "usage", None)
                reason, fatal = self._cut_off_reason(getattr(usage, "completion_tokens", None)), True
            except Unparseable as exc:
                reason = f"unusable answer ({exc})"
                retry_reason, spell_out = str(exc), True
                no_json = str(exc) == _NO_JSON
            except _Deadline:
                reason, advice = f"no answer within {self.settings.timeout_s:g} s", _SLOW_ADVICE
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                # 422 too: servers built on axum/FastAPI validation (TGI among them) answer a request form
                # they do not know (a json_schema response_format, forced tools) with 422, not 400
                overflow = "ContextOverflow" in type(exc).__name__
                hint = _request_hint(f"{exc} {getattr(exc, 'body', '')}" + (" context window" if overflow else ""),
                                     images)
                # a filter judged this group's prompt or images, not the endpoint: Azure's content_filter, OpenAI's
                # content_policy_violation / invalid_prompt (flagged as violating its usage policy, an input
                # photo among them), which stopped a batch of groups that pass
                flagged = any(code in f"{exc} {getattr(exc, 'code', '')}" for code in _FILTERED)
                # a request too large or with too many images is refused in every form, and a flagged one for its
                # content (it was resent as function calling and as text, three paid requests to the same flag):
                # not resent as such. The step-down is for a server that refuses the form (bounded per call)
                if (not overflow and not hint and not flagged and mode != MODES[-1]
                        and stepped < len(MODES) - 1 and self._degrade(mode, own)):
                    stepped += 1
                    continue  # not an attempt: the same request in a simpler form
                if not flagged:
                    # rejected in every form: the request, not the method, is at fault (e.g. an image
                    # too large), so this call's own step-downs are undone, unless another call moved or confirmed
                    # the mode since (_put_back) (a flag after a step-down says nothing of the forms: the one
                    # refused stays refused)
                    self._put_back(own)
                # the advice first: the line is cut at 300 characters, and a server's words can fill them
                reason = f"endpoint rejected the request{f': {hint}' if hint else ''} ({self._describe(exc)})"
                fatal = True
                if not flagged:
                    unusable = f"it refuses the request (HTTP {exc.status_code})"
                    too_large = overflow or _too_long(f"{exc} {getattr(exc, 'body', '')}")
            except openai.APITimeoutError as exc:
                if _connect_timed_out(exc):  # nothing answered at the address: as a refused connection
                    reason, advice, unusable = self._unreachable(exc)
                else:  # the server took the request and is slow: transient
                    reason, advice = f"no answer within {self.settings.timeout_s:g} s", _SLOW_ADVICE
            except openai.RateLimitError as exc:
                if "insufficient_quota" in (getattr(exc, "code", None), getattr(exc, "type", None)):
                    # OpenAI's 429 for an account out of credit: no wait cures it, and each group retried it
                    # with the backoff (minutes for a run) before failing as "rate limited"
                    reason, fatal = f"the account's quota is used up ({self._describe(exc)})", True
                    unusable = "the account's quota is used up"
                else:
                    reason = f"rate limited ({self._describe(exc)})"
                    wait_hint = _retry_after_s(exc)
                    rate_limited = True
            except openai.InternalServerError as exc:
                if _too_long(f"{exc} {getattr(exc, 'body', '')}"):
                    # llama.cpp before its 400 for this (ik_llama.cpp, LM Studio's MLX models still) answers a
                    # context overflow with a 500: it was retried with the backoff, to the same 500, without advice
                    self._put_back(own)
                    hint = _request_hint(f"{exc} {getattr(exc, 'body', '')}", images)
                    reason, fatal = f"endpoint rejected the request: {hint} ({self._describe(exc)})", True
                    unusable, too_large = f"it refuses the request (HTTP {exc.status_code})", True
                else:
                    reason = f"server error ({self._describe(exc)})"
                    wait_hint = _retry_after_s(exc)  # a 503 (loading, overloaded) says when to come back
                    server_failed = True
            except openai.APIConnectionError as exc:
                reason, advice, unusable = self._unreachable(exc)
                # a handshake refused for what the two ends are (https to a plain http server, a certificate not
                # trusted) fails the same way on every try: each retry of each group waited its backoff for it
                fatal = _tls_for_good(exc)
            except openai.APIStatusError as exc:  # 401, 403, 404...: retrying will not help
                if exc.status_code in (408, 409):  # a proxy's request timeout, a lock timeout: the openai
                    # client retries these itself, and its retries are off here (max_retries=0)
                    reason = f"server busy ({self._describe(exc)})"
                    wait_hint = _retry_after_s(exc)
                else:
                    reason, fatal = self._describe(exc), True
                    # vLLM's "The model `x` does not exist", Ollama's "model \"x\" not found": the address is
                    # right. The advice on /v1 came first and, behind a longer address, cut the server's words off
                    # at 300 characters, and the stop's line (the export's) said "not found there"
                    no_model = exc.status_code == 404 and _model_missing(
                        f"{exc} {getattr(exc, 'body', '')}", self.settings.model)
                    if no_model:
                        reason = f"the model {self.settings.model!r} is not served there: {reason}"
                        advice = _MODEL_ADVICE
                    elif exc.status_code in (404, 405):
                        reason = self._where(exc) + reason
                    if 400 <= exc.status_code < 500:  # the key, the model, the path: the same for every group
                        unusable = {401: "the key is refused", 403: "access is denied", 404: "not found there",
                                    405: "not found there"}.get(exc.status_code, f"HTTP {exc.status_code}")
                        too_large = exc.status_code == 413  # this group's body: a smaller one may pass
                        if no_model:
                            unusable = f"the model {self.settings.model!r} is not served there"
                        if exc.status_code in (401, 403):  # which variable to change, as README promises
                            advice = _key_advice(exc.status_code, self._key_source)
                            if self._key_source[0] is not None:
                                var = self._key_source[0]
                                unusable = (f"the key is refused: the one in {var}" if exc.status_code == 401
                                            else f"access is denied to the key in {var}")
            except openai.OpenAIError as exc:
                reason, fatal = self._describe(exc), True
                if "ContextOverflow" in type(exc).__name__ and (cause := exc.__cause__) is not None:
                    # langchain-openai re-raises any API error but a 400 that says "exceeds the context window"
                    # (a 500, a 413) as OpenAIAPIContextOverflowError, which has no status: it missed the branches
                    # above and was reported without advice, as a plain failure. Told as they tell an overflow
                    self._put_back(own)
                    status = getattr(cause, "status_code", None)
                    reason = (f"endpoint rejected the request: {_request_hint('context window', images)} "
                              f"({self._describe(cause)})")
                    # (its cause may be a bare APIError without a status: no "HTTP None")
                    unusable = f"it refuses the request (HTTP {status})" if status else "it refuses the request"
                    too_large = True
            except (IndexError, KeyError, TypeError, AttributeError, ValueError) as exc:
                # a 200 that is not a chat completion ({"choices": []}, an HTML page, {"foo": 1}): the client
                # library fails on it in its own way; retried like any unusable answer
                # "malformed answer (IndexError: list index out of range)" told a user of the client's code, not of
                # the server's answer: said as what it is, the library's words after it
                reason = (f"malformed answer, not a chat completion ({type(exc).__name__}: "
                          f"{self._unsecret(str(exc))[:120]})")  # mask, then cut
                retry_reason = "the previous answer was not a valid chat completion"
            attempt += 1
            if fatal or attempt >= attempts:
                break
            delay = self._backoff(attempt)
            if wait_hint is not None:
                delay = max(delay, min(wait_hint, self.max_retry_after_s))
            log.warning(
                "vlm judge: group %s attempt %d/%d failed: %s; retrying in %.2f s",
                group_id,
                attempt,
                attempts,
                self._scrub(reason, advice),
                delay,
            )
            time.sleep(delay)
        # Raised here, outside any except block, so no provider exception is chained to it.
        tries = f"after {attempt} attempt{'s' if attempt != 1 else ''}"
        if rate_limited:  # the last attempt too: the retries ran out against the rate limit
            advice = self._rate_advice()
        elif server_failed:  # "server error (HTTP 500: internal error)" ended the line with no next step
            advice = (f"; the server's own log says why (one still loading a model needs more retries: "
                      f"HMRCRITIC_VLM_RETRIES, now {self.settings.max_retries})")
        elif no_json:
            advice = _NO_JSON_ADVICE
        message = self._scrub(f"VLM judge failed for group {group_id} {tries}: {reason}", advice)
        if unusable:  # of the last attempt: one refused connection amid timeouts is no dead endpoint
            cls = GroupTooLargeError if too_large else EndpointUnusableError
            raise cls(message, self._address(), unusable)
        raise JudgeError(message)
