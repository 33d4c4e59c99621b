"""A local OpenAI-compatible chat server for tests and benchmarks (the only test double: the network edge).

Real ``langchain-openai``/``openai`` clients talk HTTP to it on 127.0.0.1, so every byte the judge sends is
what a real endpoint would get. It also *checks* each chat request — an Authorization header, temperature 0,
``image_url`` parts that decode to real PNG/JPEG images, and ``response_format`` json_schema or ``tools``
(unless the server is set to reject both) — and records the requests and any violations for assertions.

Behaviours are scripted per request (a FIFO queue, then ``default``):

``good``        a critique computed from the evidence table in the prompt (worse evidence → lower score);
                for rule-mining requests, a valid rule on the first measure of the table
``good100``     the same on the paper's 0-100 scale        ``fixed``       ``fixed_answer`` verbatim
``prose``       the good JSON embedded in a sentence, as plain text content
``garbage``     text with no JSON                           ``wrong_count`` one hypothesis too few
``slow``        sleeps ``slow_s`` before answering           ``429``         rate limited, ``Retry-After``
``500``         internal server error                        ``401_echo``    401 quoting the Authorization
``503``         unavailable (a model loading), ``Retry-After``
``400``         bad request whatever its form (e.g. an image too large)
``trickle``     the good answer, one byte every ``trickle_s`` (a stalled stream: every read succeeds, the
                call never ends)
``empty_choices`` / ``not_completion``  a 200 whose body is no chat completion (``choices: []`` / ``{"foo": 1}``)
``rules``       a VLM that follows the prompt's rules literally: every hypothesis starts at 10 and loses the
                "together" amount the rules list gives it (without that line: the sum of what each rule that holds
                shows "of 10"); it cites those rules. ``rules_raw`` takes a rule's own points from 10 (the prompt
                before session 30 showed only those), ``rules_sum`` adds the "of 10" amounts; both floored at 0

``reject_response_format`` / ``reject_tools`` make the server answer 400 to those request forms (a server
without structured outputs / without forced tool choice). ``latency_s`` is added to every chat request.
Run as a script to serve on a port for manual use: ``python tests/openai_stub_server.py --port 8000``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

AXES = ("motion_structure", "physical_feasibility", "image_alignment")
BEHAVIOURS = {
    "good",
    "good100",
    "fixed",
    "prose",
    "garbage",
    "wrong_count",
    "slow",
    "400",
    "429",
    "500",
    "503",
    "401_echo",
    "trickle",
    "empty_choices",
    "not_completion",
    "cut_off",
    "rules",
    "rules_raw",
    "rules_sum",
}


@dataclass
class Recorded:
    """One request as the server saw it."""

    path: str
    body: dict
    auth: str | None
    t_start: float
    behaviour: str = ""
    kind: str = ""  # "critique" | "rules"
    mode: str = ""  # "json_schema" | "tools" | "text"
    images: int = 0
    status: int = 0


@dataclass
class _State:
    script: deque = field(default_factory=deque)
    requests: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    gets: list = field(default_factory=list)  # the paths of GET requests (doctor --probe's /models)
    arrivals: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _user_text(body: dict) -> str:
    out = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "\n".join(out)


def _image_urls(body: dict) -> list[str]:
    urls = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, list):
            for p in content:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    url = p.get("image_url")
                    urls.append(url.get("url", "") if isinstance(url, dict) else str(url))
    return urls


def _check_image(url: str) -> str | None:
    """None when ``url`` is a data URL of a decodable PNG/JPEG matching its declared type, else why not."""
    m = re.match(r"data:(image/(png|jpeg));base64,(.*)$", url, re.S)
    if not m:
        return f"image_url is not a base64 PNG/JPEG data URL: {url[:40]!r}"
    try:
        raw = base64.b64decode(m.group(3), validate=True)
    except ValueError:
        return "image_url base64 does not decode"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt = im.format
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a violation
        return f"image does not decode: {exc}"
    if fmt.lower() != m.group(2):
        return f"image declared {m.group(1)} but is {fmt}"
    return None


def parse_evidence(text: str) -> tuple[int, list[str], list[list[float]], dict[str, bool]]:
    """(N, measure names, rows, higher_is_better) from the prompt's group line and evidence table."""
    m = re.search(r"GROUP \S+: (\d+) hypotheses", text)
    n = int(m.group(1)) if m else 0
    better: dict[str, bool] = {}
    for lm in re.finditer(r"^- (\w+): (.*)$", text, re.M):
        better[lm.group(1)] = "higher is better" in lm.group(2) or "lower is worse" in lm.group(2)
    names: list[str] = []
    rows: list[list[float]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("hyp | ") and "verdict" not in line:
            names = [c.strip() for c in line.split("|")[1:]]
            for row in lines[i + 1 :]:
                cells = [c.strip() for c in row.split("|")]
                if len(cells) != len(names) + 1 or not cells[0].isdigit():
                    break
                rows.append([float(c) for c in cells[1:]])
            break
    return n or len(rows), names, rows, better


def good_critique(text: str, scale: float = 10.0) -> dict:
    """Scores from the evidence: each measure min-max normalised over the group into a badness in [0, 1];
    overall = 10 - 8 * mean badness, so the hypothesis with the worst evidence scores lowest."""
    n, names, rows, better = parse_evidence(text)
    bad = [0.0] * n
    if rows and names:
        for j, name in enumerate(names):
            col = [r[j] for r in rows]
            lo, hi = min(col), max(col)
            for i in range(n):
                b = (col[i] - lo) / (hi - lo) if hi > lo else 0.0
                bad[i] += (1.0 - b if better.get(name) else b) / len(names)
    scores = []
    for i in range(n):
        overall = 10.0 - 8.0 * bad[i]
        scores.append(
            {
                "index": i,
                **{a: round(overall * scale / 10.0, 3) for a in AXES},
                "overall": round(overall * scale / 10.0, 3),
                "rationale": f"stub: mean normalised badness {bad[i]:.2f}",
            }
        )
    return {"scores": scores, "summary": "stub critique from the evidence table", "rules_applied": []}


def _hyp_ids(text: str) -> list[int]:
    """"0-5, 7" → [0, 1, 2, 3, 4, 5, 7] (the prompt's hypothesis ranges)."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def rule_following_critique(text: str, reading: str = "rules") -> dict:
    """Scores as a VLM that applies the prompt's rules literally: 10 less the "together" amount listed for a
    hypothesis (``rules``), or per rule that holds for it the amount its line shows "of 10" (a graded rule: the
    middle of the range it says it takes; ``rules_sum``, or ``rules`` without a together line) or its own points
    (``rules_raw``) — floored at 0; every rule that holds cited."""
    n, _, _, _ = parse_evidence(text)
    overall = [10.0] * n
    together = re.search(r"^Together, compounded .*?: (.*) of 10$", text, re.M)
    if reading == "rules" and together:
        for m in re.finditer(r"h(\d+) -([\d.]+)", together.group(1)):
            if int(m.group(1)) < n:
                overall[int(m.group(1))] -= float(m.group(2))
    applied = []
    for line in text.splitlines():
        m = re.match(r"- \[(\S+)\] .*-> -([\d.]+) points.*?= -([\d.]+) of 10.*holds for hyp ([\d, -]+)", line)
        if not m:
            continue
        rule_id, points, of_ten, held = m.group(1), float(m.group(2)), float(m.group(3)), _hyp_ids(m.group(4))
        taking = re.search(r"\(taking ([\d.]+)(?:–([\d.]+))? of 10\)", line)
        if taking:
            of_ten = (float(taking.group(1)) + float(taking.group(2) or taking.group(1))) / 2
        if not (reading == "rules" and together):
            for i in held:
                if i < n:
                    overall[i] -= points if reading == "rules_raw" else of_ten
        applied.append(rule_id)
    scores = [{"index": i, **{a: round(max(0.0, v), 3) for a in AXES}, "overall": round(max(0.0, v), 3),
               "rationale": "stub: 10 less the rules that hold"} for i, v in enumerate(overall)]
    return {"scores": scores, "summary": "stub critique from the rules", "rules_applied": applied}


def good_rules(text: str) -> dict:
    _, names, rows, _ = parse_evidence(text)
    name = names[0] if names else "reproj_px"
    threshold = sorted(r[0] for r in rows)[len(rows) // 2] if rows else 10.0
    return {
        "rules": [
            {
                "text": f"{name} above {threshold:g} -> take off 2 points",
                "tags": ["stub"],
                "measure": name,
                "comparator": ">",
                "threshold": threshold,
                "points": 2.0,
                "axis": None,
            },
            {
                "text": "limbs crossing through the torso in the side view -> take off 4 points",
                "tags": ["stub"],
            },
        ]
    }


class StubOpenAIServer:
    """ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread. Use as a context manager."""

    def __init__(
        self,
        *,
        default: str = "good",
        latency_s: float = 0.0,
        slow_s: float = 5.0,
        retry_after: str = "1",
        reject_response_format: bool = False,
        reject_tools: bool = False,
        require_images: bool = True,
        fixed_answer: dict | None = None,
        model: str = "stub-vlm",
        port: int = 0,
    ):
        if default not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {default!r}")
        self.default = default
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.trickle_s = 0.05
        self.retry_after = retry_after
        self.reject_response_format = reject_response_format
        self.reject_tools = reject_tools
        self.require_images = require_images
        self.fixed_answer = fixed_answer
        self.model = model
        self._state = _State()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- control --------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *behaviours: str) -> None:
        """Queue behaviours for the next requests (then ``default`` again)."""
        for b in behaviours:
            if b not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {b!r}")
        with self._state.lock:
            self._state.script.extend(behaviours)

    @property
    def requests(self) -> list[Recorded]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def violations(self) -> list[str]:
        with self._state.lock:
            return list(self._state.violations)

    @property
    def gets(self) -> list[str]:
        """The paths of the GET requests received (``/v1/models``: an endpoint probe)."""
        with self._state.lock:
            return list(self._state.gets)

    @property
    def arrivals(self) -> int:
        """Chat requests received so far, including unfinished ones (``requests`` lists finished ones)."""
        return self._state.arrivals

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    def start(self) -> StubOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling -----------------------------------------------------------------------------

    def _next_behaviour(self) -> str:
        with self._state.lock:
            return self._state.script.popleft() if self._state.script else self.default

    def _violation(self, rec: Recorded, why: str) -> None:
        with self._state.lock:
            self._state.violations.append(f"request {len(self._state.requests)}: {why}")

    def _answer(self, rec: Recorded) -> tuple[int, dict, dict]:
        """(status, headers, json body) for one chat request."""
        body = rec.body
        if body.get("temperature") != 0:
            self._violation(rec, f"temperature is {body.get('temperature')!r}, expected 0")
        if not rec.auth or not rec.auth.startswith("Bearer ") or len(rec.auth) <= len("Bearer "):
            self._violation(rec, "no Authorization bearer header")
        urls = _image_urls(body)
        rec.images = len(urls)
        if self.require_images and not urls:
            self._violation(rec, "no image_url parts")
        for url in urls:
            if (why := _check_image(url)) is not None:
                self._violation(rec, why)
        rf = body.get("response_format")
        tools = body.get("tools")
        if rf is not None:
            rec.mode = "json_schema"
            if rf.get("type") != "json_schema" or "schema" not in rf.get("json_schema", {}):
                self._violation(rec, f"response_format is not a json_schema: {str(rf)[:80]}")
            if self.reject_response_format:
                return 400, {}, _error("response_format json_schema is not supported by this server", 400)
        elif tools:
            rec.mode = "tools"
            if self.reject_tools:
                return 400, {}, _error("tool_choice is not supported by this server", 400)
        else:
            rec.mode = "text"
            if not (self.reject_response_format and self.reject_tools):
                self._violation(rec, "neither response_format json_schema nor tools sent")
        text = _user_text(body)
        rec.kind = "rules" if "MISTAKES" in text else "critique"
        schema_name = (rf or {}).get("json_schema", {}).get("name") or (
            tools[0]["function"]["name"] if tools else ""
        )
        if schema_name and schema_name != ("RuleProposals" if rec.kind == "rules" else "GroupCritique"):
            self._violation(rec, f"schema {schema_name} does not match a {rec.kind} request")

        b = rec.behaviour
        if b == "slow":
            self._stop.wait(self.slow_s)
            b = "good"
        if b == "trickle":
            b = "good"  # the body is sent slowly (Handler._send)
        if b == "empty_choices":
            return 200, {}, {"id": "chatcmpl-stub", "object": "chat.completion", "model": self.model, "choices": []}
        if b == "not_completion":
            return 200, {}, {"foo": 1}
        if b == "429":
            return 429, {"Retry-After": self.retry_after}, _error("rate limit reached, slow down", 429)
        if b == "400":
            return 400, {}, _error("image too large for this model", 400)
        if b == "500":
            return 500, {}, _error("internal error", 500)
        if b == "503":
            return 503, {"Retry-After": self.retry_after}, _error("model is loading, try again", 503)
        if b == "401_echo":
            return 401, {}, _error(f"invalid credentials: {rec.auth}", 401)
        if b == "garbage":
            return 200, {}, _completion(self.model, content="I think they all look fine, mostly.")
        if rec.kind == "rules":
            answer = self.fixed_answer if b == "fixed" and self.fixed_answer else good_rules(text)
        elif b == "fixed" and self.fixed_answer:
            answer = self.fixed_answer
        elif b in ("rules", "rules_raw", "rules_sum"):
            answer = rule_following_critique(text, reading=b)
        else:
            answer = good_critique(text, scale=100.0 if b == "good100" else 10.0)
        if b == "wrong_count" and rec.kind == "critique":
            answer = {**answer, "scores": answer["scores"][:-1]}
        payload = json.dumps(answer)
        if b == "cut_off":  # the server's output-token limit: half the answer, finish_reason "length"
            half = payload[: len(payload) // 2]
            out = _completion(self.model, tool=(tools[0]["function"]["name"], half) if rec.mode == "tools" else None,
                              content=None if rec.mode == "tools" else half)
            out["choices"][0]["finish_reason"] = "length"
            out["usage"]["completion_tokens"] = 123
            return 200, {}, out
        if b == "prose":
            return (
                200,
                {},
                _completion(self.model, content=f"Here is my verdict:\n```json\n{payload}\n```\nDone."),
            )
        if rec.mode == "tools":
            return 200, {}, _completion(self.model, tool=(tools[0]["function"]["name"], payload))
        return 200, {}, _completion(self.model, content=payload)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, headers: dict, obj: dict, trickle: bool = False) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if not trickle:
                        self.wfile.write(data)
                    for i in range(len(data) if trickle else 0):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        if server._stop.wait(server.trickle_s):
                            break
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

            def do_GET(self) -> None:
                with server._state.lock:
                    server._state.gets.append(self.path)
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {}, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {}, _error(f"no route {self.path}", 404))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {}, _error(f"no route {self.path}", 404))
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, {}, _error("body is not JSON", 400))
                    return
                rec = Recorded(self.path, body, self.headers.get("Authorization"), time.monotonic())
                st = server._state
                with st.lock:
                    st.arrivals += 1
                    st.in_flight += 1
                    st.max_in_flight = max(st.max_in_flight, st.in_flight)
                try:
                    rec.behaviour = server._next_behaviour()
                    if server.latency_s:
                        server._stop.wait(server.latency_s)
                    status, headers, obj = server._answer(rec)
                finally:
                    with st.lock:
                        st.in_flight -= 1
                rec.status = status
                with st.lock:
                    st.requests.append(rec)
                self._send(status, headers, obj, trickle=rec.behaviour == "trickle")

        return Handler


class JSONAnswerServer:
    """A chat endpoint on 127.0.0.1 (a free port, a daemon thread; a context manager) that answers each POST with
    ``answer(body) -> (status, json_object)`` — or ``(status, raw_bytes, content_type)`` for a body that is no JSON
    (an event stream): the scaffolding of the tests' hand-made servers (a canned error, a context limit, answers by
    request form, a stream), which :class:`StubOpenAIServer`'s fixed behaviours do not cover."""

    def __init__(self, answer):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                status, obj, *ctype = answer(
                    json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"))
                data = obj if ctype else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype[0] if ctype else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _error(message: str, status: int) -> dict:
    kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "server_error"
    )
    return {"error": {"message": message, "type": kind, "code": None, "param": None}}


def _completion(model: str, *, content: str | None = None, tool: tuple[str, str] | None = None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish = "stop"
    if tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {"id": "call_stub_0", "type": "function", "function": {"name": tool[0], "arguments": tool[1]}}
        ]
        finish = "tool_calls"
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="serve the OpenAI-compatible stub on 127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--default", default="good", choices=sorted(BEHAVIOURS))
    args = ap.parse_args()
    srv = StubOpenAIServer(port=args.port, latency_s=args.latency, default=args.default).start()
    print(f"serving on {srv.base_url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
