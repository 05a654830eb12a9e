"""OpenAI's Files and Batch API, small: upload a JSONL file, create a batch over it, retrieve its status, download
its output and error files. Each line is answered by POSTing its body to this server's own
/v1/chat/completions, so the replies, the faults (fail_matching, fail_next, fault_rate) and the stats are the
chat endpoint's own: a batch line costs exactly what the same live request costs, and /_stats counts it.

A batch moves validating -> in_progress -> completed | failed | expired, one step per retrieve at most:
- validating: the next retrieve checks every line (JSON, unique custom_id, method POST, url = the batch's
  endpoint, a known model); a bad file, or an injected `batch_fail_validation`, fails the batch with errors.
  With `batch_enqueued_token_limit`, a batch whose input tokens (as the chat endpoint's usage counts them) and
  those of its model's batches in progress pass the limit fails with code token_limit_exceeded and OpenAI's
  message (openai-python issue 2084): nothing in it runs, and the client may create it again later.
- in_progress: the lines are answered in the background; the batch stays here for at least
  `batch_slow_polls` retrieves (slow progress), with `request_counts` growing as lines finish.
- completed, or expired (`batch_expire_half`: only the first half of the lines ran; the rest are error lines
  with code batch_expired, as OpenAI writes them), with `output_file_id` and `error_file_id`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from testserver.replies import error_response, json_response
from testserver.responders import prompt_tokens


class BatchHost(Protocol):
    """What the batch routes use of the server they are mounted on (testserver.app.FakeOpenAIServer; not imported:
    the app builds on this module). `options` is its ServerOptions (batch_* settings, models)."""

    options: Any
    url: str
    _stats: Any

ENDPOINTS = frozenset({"/v1/chat/completions"})
TOKEN_LIMIT_CODE = "token_limit_exceeded"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    fail_validation: bool
    expire_half: bool
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    times: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom_id -> output or error line
    completed: int = 0
    failed: int = 0
    polls_in_progress: int = 0
    task: asyncio.Task[None] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    model: str | None = None  # of its first line: the queue's limit is per model
    tokens: int = 0  # input tokens of its lines, counted once it is validated

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            "metadata": self.metadata,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "request_counts": {"total": len(self.lines), "completed": self.completed, "failed": self.failed},
            **{f"{k}_at": v for k, v in self.times.items()},
        }


class BatchService:
    """The /v1/files and /v1/batches routes of one FakeOpenAIServer."""

    def __init__(self, server: BatchHost):
        self.server = server
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids: Counter[str] = Counter()
        self.fail_validation_left = 0
        self.expire_half_left = 0
        # the next N creates make the batch but answer 500, as when the response is lost on the way back (set
        # directly on an in-process server: a retried create must not make a second batch)
        self.lose_create_response_left = 0
        self._session: aiohttp.ClientSession | None = None

    def configure(self, options: Any, changed: frozenset[str] | None) -> None:
        """Take the one-shot batch faults from `options` (only those named in `changed`; None: all)."""
        if changed is None or "batch_fail_validation" in changed:
            self.fail_validation_left = options.batch_fail_validation
        if changed is None or "batch_expire_half" in changed:
            self.expire_half_left = options.batch_expire_half

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}", self._file)
        app.router.add_get("/v1/files/{file_id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{batch_id}", self._retrieve)
        app.on_cleanup.append(self._close)

    def _new_id(self, prefix: str) -> str:
        self._ids[prefix] += 1
        return f"{prefix}-test{self._ids[prefix]:06d}"

    def _count(self, what: str) -> None:
        self.server._stats.batch[what] += 1

    # -- files ------------------------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            return error_response(400, "a multipart field 'file' is required", param="file")
        if purpose != "batch":
            return error_response(400, f"purpose must be 'batch' here, got {purpose!r}", param="purpose")
        f = _File(self._new_id("file"), upload.filename, "batch", upload.file.read())
        self.files[f.id] = f
        self._count("files_uploaded")
        return json_response(f.to_json())

    async def _file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        return json_response(f.to_json()) if f else error_response(404, "No such File object", code="not_found")

    async def _content(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        if f is None:
            return error_response(404, "No such File object", code="not_found")
        self._count("downloads")
        return web.Response(body=f.data, content_type="application/octet-stream")

    # -- batches ----------------------------------------------------------------------------------
    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            return error_response(400, f"the request body is not valid JSON: {e}")
        if body.get("input_file_id") not in self.files:
            return error_response(404, f"No such File object: {body.get('input_file_id')!r}", code="not_found")
        if body.get("endpoint") not in ENDPOINTS:
            return error_response(400, f"endpoint must be one of {sorted(ENDPOINTS)}", param="endpoint")
        if body.get("completion_window") != "24h":
            return error_response(400, "completion_window must be '24h'", param="completion_window")
        fail, self.fail_validation_left = self.fail_validation_left > 0, max(0, self.fail_validation_left - 1)
        expire = not fail and self.expire_half_left > 0
        self.expire_half_left -= int(expire)
        b = _Batch(self._new_id("batch"), body["input_file_id"], body["endpoint"], body.get("metadata"), fail, expire)
        self.batches[b.id] = b
        self._count("batches_created")
        if self.lose_create_response_left > 0:
            self.lose_create_response_left -= 1
            return error_response(500, "injected fault: the batch was created but this response was lost")
        return json_response(b.to_json())

    async def _list(self, request: web.Request) -> web.Response:
        data = [b.to_json() for b in reversed(self.batches.values())]  # newest first, as OpenAI lists them
        return json_response(
            {
                "object": "list",
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["batch_id"])
        if b is None:
            return error_response(404, "No such Batch object", code="not_found")
        self._count("retrieves")
        self._advance(b)
        return json_response(b.to_json())

    def _advance(self, b: _Batch) -> None:
        now = int(time.time())
        if b.status == "validating":
            problems = self._validate(b) or self._over_token_limit(b)
            if problems:
                b.status, b.errors, b.times["failed"] = "failed", problems, now
                return
            b.status, b.times["in_progress"] = "in_progress", now
            todo = b.lines[: len(b.lines) // 2] if b.expire_half else b.lines
            b.task = asyncio.ensure_future(self._run(b, todo))
        elif b.status == "in_progress":
            b.polls_in_progress += 1
            if b.task is not None and b.task.done() and b.polls_in_progress >= self.server.options.batch_slow_polls:
                self._finish(b, now)

    def _validate(self, b: _Batch) -> list[dict[str, Any]]:
        if b.fail_validation:
            return [{"code": "invalid_request", "message": "injected fault: the batch failed validation", "line": 1}]
        problems: list[dict[str, Any]] = []
        seen: set[str] = set()
        for n, raw in enumerate(self.files[b.input_file_id].data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                problems.append({"code": "invalid_json_line", "message": "the line is not JSON", "line": n})
                continue
            cid = line.get("custom_id")
            body = line.get("body")
            if not isinstance(cid, str) or cid in seen:
                problems.append(
                    {"code": "duplicate_custom_id", "message": f"custom_id {cid!r} is not unique", "line": n}
                )
            elif line.get("method") != "POST" or line.get("url") != b.endpoint:
                problems.append(
                    {"code": "invalid_url", "message": f"method must be POST and url {b.endpoint}", "line": n}
                )
            elif not isinstance(body, dict) or body.get("model") not in self.server.options.models:
                problems.append({"code": "model_not_found", "message": "the body's model is not served", "line": n})
            seen.add(str(cid))
            b.lines.append(line)
        if not b.lines and not problems:
            problems.append({"code": "empty_file", "message": "the input file has no requests", "line": None})
        return problems

    def _over_token_limit(self, b: _Batch) -> list[dict[str, Any]]:
        """The queue's enqueued-token limit per model: this batch's tokens beside those of its model's batches in
        progress. Over it, the batch fails validation as OpenAI's does, with none of its lines run."""
        b.model = b.lines[0]["body"]["model"]
        b.tokens = sum(prompt_tokens(line["body"].get("messages")) for line in b.lines)
        limit = self.server.options.batch_enqueued_token_limit
        enqueued = sum(o.tokens for o in self.batches.values() if o.status == "in_progress" and o.model == b.model)
        if limit is None or enqueued + b.tokens <= limit:
            stats = self.server._stats.batch
            stats["enqueued_tokens_max"] = max(stats["enqueued_tokens_max"], enqueued + b.tokens)
            return []
        self._count(TOKEN_LIMIT_CODE)
        b.lines = []  # nothing in it runs: request_counts are zero, as OpenAI reports a batch failed in validation
        message = (
            f"Enqueued token limit reached for {b.model} in organization org-testserver. Limit: {limit:,} enqueued "
            "tokens. Please try again once some in_progress batches have been completed."
        )
        return [{"code": TOKEN_LIMIT_CODE, "message": message, "line": None}]

    async def _run(self, b: _Batch, lines: list[dict[str, Any]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        gate = asyncio.Semaphore(self.server.options.batch_concurrency)

        async def one(line: dict[str, Any]) -> None:
            async with gate, self._session.post(self.server.url + "/chat/completions", json=line["body"]) as r:
                raw = await r.read()
                status = r.status
            try:
                body: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")  # a malformed answer stays malformed in the output file
            response = {"status_code": status, "request_id": f"req-{line['custom_id']}", "body": body}
            b.results[line["custom_id"]] = {"custom_id": line["custom_id"], "response": response, "error": None}
            if status == 200:
                b.completed += 1
            else:
                b.failed += 1

        await asyncio.gather(*(one(line) for line in lines))

    def _finish(self, b: _Batch, now: int) -> None:
        out, err = [], []
        for line in b.lines:
            cid = line["custom_id"]
            result = b.results.get(cid)
            if result is None:  # not reached before the window closed
                b.failed += 1
                result = {
                    "custom_id": cid,
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }
            record = {"id": self._new_id("batch_req"), **result}
            ok = result["response"] is not None and result["response"]["status_code"] == 200
            (out if ok else err).append(orjson.dumps(record))
        for lines, attr in ((out, "output_file_id"), (err, "error_file_id")):
            if lines:
                f = _File(self._new_id("file"), f"{b.id}_{attr}.jsonl", "batch_output", b"\n".join(lines) + b"\n")
                self.files[f.id] = f
                setattr(b, attr, f.id)
        b.status = "expired" if b.expire_half else "completed"
        b.times["expired" if b.expire_half else "completed"] = now

    async def _close(self, app: web.Application) -> None:
        for b in self.batches.values():
            if b.task is not None and not b.task.done():
                b.task.cancel()
        if self._session is not None:
            await self._session.close()
