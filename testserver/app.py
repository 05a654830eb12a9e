"""The aiohttp application: OpenAI-shaped endpoints, fault injection, control and stats endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import socket
import time
from typing import Any

import orjson
from aiohttp import web

from testserver.batches import BatchService
from testserver.faults import STATUS_FAULTS, FaultKind, FaultPicker
from testserver.options import ServerOptions
from testserver.ratelimit import RateLimiter
from testserver.replicas import ReplicaPool
from testserver.replies import choice, distort, error_response, json_response, status_fault
from testserver.responders import (
    AVOID_MARKER,
    PREFER_MARKER,
    REASONING_TOKENS,
    estimate_tokens,
    find_blocks,
    judge,
    marker_slots,
    sample_text,
    text_of,
    truncate,
)
from testserver.stats import CLIENT_CLOSED, DROPPED, Stats

logger = logging.getLogger(__name__)

_JUDGE_FORMATS = frozenset({"json_schema", "json_object"})
_MAX_N = 128
_REPLICA_KEYS = frozenset({"replicas_max", "replicas_min", "replica_max_inputs", "replica_target_inputs",
                           "replica_startup_s", "replica_prefill_s", "replica_token_latency_s", "replica_scaledown_s",
                           "replica_models"})
_RATE_KEYS = frozenset({"tpm_limit", "rpm_limit", "rate_limit_models"})


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers from `responders` and injects faults.

    `await start()` binds a socket (port 0: a free one) and serves on the running loop; `url` is then
    the base URL ending in /v1. `control`, `stats` and `reset` do what the /_control, /_stats and /_reset
    endpoints do, for in-process use.
    """

    def __init__(self, options: ServerOptions | None = None):
        self._initial = options or ServerOptions()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._counter = 0
        self._stats = Stats(self._initial.log_size)
        self.batches = BatchService(self)
        self.replicas: ReplicaPool | None = None  # the Modal-like replica model, when replicas_max is set
        self._apply(self._initial)
        self.app = self._make_app()

    # -- settings ---------------------------------------------------------------------------------

    def _apply(self, options: ServerOptions, changed: frozenset[str] | None = None) -> None:
        """Make `options` current; `changed` (None: everything) says which fault state to rebuild."""
        self.options = options
        self._pattern = re.compile(options.completion_pattern, re.DOTALL)
        self._models = frozenset(options.models)
        self._stats.resize(options.log_size)
        self.batches.configure(options, changed)
        if changed is None or changed & _REPLICA_KEYS:
            self._configure_replicas(options, rebuild=changed is None)
        if changed is None or changed & _RATE_KEYS:
            self.limiter = RateLimiter(options.rpm_limit, options.tpm_limit, options.rate_limit_models)  # buckets full
        if changed is None:
            self.picker = FaultPicker(options)
            self._jitter_rng = random.Random(options.seed + 1)
            return
        self.picker.configure(options, changed)  # a pending fail_next queue survives other changes
        if "seed" in changed:
            self._jitter_rng = random.Random(options.seed + 1)

    def _configure_replicas(self, options: ServerOptions, *, rebuild: bool) -> None:
        """A new pool at start, reset, or when the model is turned on; otherwise the pool takes the new settings."""
        self._replica_models = None if options.replica_models is None else frozenset(options.replica_models)
        if self.replicas is not None and (rebuild or options.replicas_max is None):
            self.replicas.close()
            self.replicas = None
        if options.replicas_max is None:
            return
        if self.replicas is None:
            self.replicas = ReplicaPool(options)
        else:
            self.replicas.configure(options)

    def control(self, **values: Any) -> dict[str, Any]:
        """Apply a partial update of the options (ValueError if invalid); returns `describe()`."""
        self._apply(self.options.updated(values), frozenset(values))
        return self.describe()

    def describe(self) -> dict[str, Any]:
        out = self.options.to_json()
        out["fail_next_remaining"] = [
            {"kind": e.kind.value, "count": e.count, "model": e.model} for e in self.picker.queue
        ]
        out["url"] = self.url if self.port is not None else None
        return out

    def reset(self) -> None:
        """Clear the stats, restore the start options, then clear every fault (rate 0, no rules)."""
        clean = self._initial.updated({"fault_rate": 0.0, "fail_next": [], "fail_matching": [],
                                       "batch_fail_validation": 0, "batch_expire_half": 0})
        self._stats = Stats(clean.log_size)
        self._apply(clean)

    def stats(self, *, log: bool = True, since: int = 0, limit: int | None = None) -> dict[str, Any]:
        """Counters and the request log; "replicas" and "rate_limits" too when those models are on."""
        out = self._stats.snapshot(log=log, since=since, limit=limit)
        if self.replicas is not None:
            out["replicas"] = self.replicas.snapshot()
        if self.limiter.enabled:
            out["rate_limits"] = self.limiter.snapshot()
        return out

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not started: call `await server.start()` first")
        return f"http://{self.options.host}:{self.port}/v1"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.options.host, self.options.port))
        except OSError as e:
            sock.close()
            raise OSError(f"cannot bind {self.options.host}:{self.options.port}: {e}") from e
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,  # no per-request logging: the server must stay cheap
            handler_cancellation=True,  # a client that times out cancels its handler (logged as 499)
            shutdown_timeout=0.5,  # stop promptly even with hung requests in flight (the default waits 60 s)
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=4096).start()
        logger.info("test server listening on %s", self.url)

    async def stop(self) -> None:
        if self.replicas is not None:
            self.replicas.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP -------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        self.batches.add_routes(app)  # /v1/files and /v1/batches (testserver/batches.py)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_get("/_control", self._get_control)
        app.router.add_post("/_control", self._post_control)
        app.router.add_post("/_reset", self._post_reset)
        app.router.add_get("/health", self._health)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def _list_models(self, request: web.Request) -> web.Response:
        created = int(self._stats.started_wall)
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "testserver",
             "max_model_len": self.options.max_model_len,  # as vLLM reports it
             **({"root": self.options.roots[m]} if m in self.options.roots else {})}
            for m in self.options.models
        ]
        return json_response({"object": "list", "data": data})

    async def _get_stats(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            since = int(q.get("since", 0))
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            return error_response(400, "since and limit must be integers")
        return json_response(self.stats(log=q.get("log", "1") not in ("0", "false"), since=since, limit=limit))

    async def _get_control(self, request: web.Request) -> web.Response:
        return json_response(self.describe())

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            values = orjson.loads(await request.read() or b"{}")
            if not isinstance(values, dict):
                raise ValueError(f"the body must be a JSON object of options, got {values!r}")
            return json_response(self.control(**values))
        except (ValueError, TypeError) as e:  # orjson.JSONDecodeError is a ValueError
            return error_response(400, str(e))

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return json_response(self.describe())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as e:
            self._stats.reject(400)
            return error_response(400, f"the request body is not valid JSON: {e}")
        problem = self._validate(body)
        if problem is not None:
            self._stats.reject(problem.status)
            return problem

        model: str = body["model"]
        n: int = body.get("n") or 1
        messages = body["messages"]
        texts = [text_of(m.get("content")) for m in messages]
        prompt_text = "\n".join(texts)
        rf = body.get("response_format")
        is_judge = isinstance(rf, dict) and rf.get("type") in _JUDGE_FORMATS
        prompt_hash = hashlib.blake2b(prompt_text.encode(), digest_size=6).hexdigest()
        if not self.limiter.applies(model):
            return await self._answer(request, body, texts, prompt_text, prompt_hash, is_judge)
        # OpenAI's admission count: the prompt's tokens plus every choice's output limit
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        admission = self.limiter.admit(model, estimate_tokens(sum(map(len, texts))) + n * limit)
        if not admission.ok:
            entry = self._stats.begin(model, n, "judge" if is_judge else "generate", prompt_hash,
                                      f"rate_limit_{admission.kind}")
            self._stats.end(entry, 429)
            type_ = "requests" if admission.kind == "requests" else "tokens"  # OpenAI's error type names the limit
            return error_response(429, admission.message, type_=type_, code="rate_limit_exceeded",
                                  headers=admission.headers)
        resp = await self._answer(request, body, texts, prompt_text, prompt_hash, is_judge)
        resp.headers.update(admission.headers)
        return resp

    async def _answer(
        self, request: web.Request, body: dict[str, Any], texts: list[str], prompt_text: str, prompt_hash: str,
        is_judge: bool,
    ) -> web.StreamResponse:
        """A validated, admitted chat request: a fault, or the answer after its latency (and its replica's time)."""
        model: str = body["model"]
        n: int = body.get("n") or 1
        messages = body["messages"]
        opts = self.options
        over_capacity = opts.max_in_flight is not None and self._stats.in_flight >= opts.max_in_flight
        fault = FaultKind.RATE_LIMIT if over_capacity else self.picker.pick(model, is_judge, prompt_text)
        label = "max_in_flight" if over_capacity else None if fault is None else fault.value
        entry = self._stats.begin(model, n, "judge" if is_judge else "generate", prompt_hash, label)
        status = CLIENT_CLOSED  # what the log says if the client goes away while we wait
        try:
            if fault in STATUS_FAULTS:
                if opts.error_latency:
                    await asyncio.sleep(opts.error_latency)
                status = STATUS_FAULTS[fault]  # type: ignore[index]
                return status_fault(fault, opts.retry_after)  # type: ignore[arg-type]
            if fault is FaultKind.DROP:
                if opts.error_latency:
                    await asyncio.sleep(opts.error_latency)
                status = DROPPED
                if request.transport is not None:
                    request.transport.abort()  # connection_lost then cancels this handler
                await asyncio.sleep(60)
                return web.Response(status=500)  # never sent: the connection is gone
            delay = opts.hang_seconds if fault is FaultKind.HANG else opts.model_latency.get(model, opts.latency)
            if opts.jitter and fault is not FaultKind.HANG:
                delay += self._jitter_rng.random() * opts.jitter
            if delay:
                await asyncio.sleep(delay)
            tokens = 0  # generated tokens of the longest choice: what a replica takes time for
            if fault is FaultKind.MALFORMED:
                resp, answer_status = web.Response(
                    body=b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess',
                    content_type="application/json",
                ), 200
            elif fault is FaultKind.NO_CHOICES:
                envelope = self._envelope(model, [], self._usage(sum(map(len, texts)), 0, 0))
                del envelope["choices"]
                resp, answer_status = json_response(envelope), 200
            elif is_judge:
                resp, answer_status, tokens = self._judge(body, prompt_text, sum(map(len, texts)), fault)
            else:
                resp, answer_status, tokens = self._generate(body, texts, messages, fault)
            pool = self.replicas
            if pool is not None and answer_status == 200 and (self._replica_models is None
                                                              or model in self._replica_models):
                await pool.serve(pool.service_time(tokens))
            status = answer_status
            return resp
        except asyncio.CancelledError:
            raise
        except Exception:
            status = 500
            logger.exception("test server failed on a request")
            raise
        finally:
            self._stats.end(entry, status)

    def _validate(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return error_response(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            return error_response(400, "you must provide a model parameter", param="model")
        if model not in self._models:
            return error_response(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return error_response(400, "messages must be a non-empty array of message objects", param="messages")
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_N):
            return error_response(400, f"n must be an integer in 1..{_MAX_N}, got {n!r}", param="n")
        if body.get("stream"):
            return error_response(400, "the test server does not support stream=true", param="stream")
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                return error_response(400, f"{key} must be an integer >= 1, got {v!r}", param=key)
        if model in self.options.reasoning_models:  # GPT-5's rules, so tests catch what production rejects
            temperature = body.get("temperature")
            if temperature is not None and temperature != 1:
                return error_response(
                    400,
                    f"Unsupported value: 'temperature' does not support {temperature} with this model. "
                    "Only the default (1) value is supported.",
                    code="unsupported_value",
                    param="temperature",
                )
            if body.get("max_tokens") is not None:
                return error_response(
                    400,
                    "Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead.",
                    code="unsupported_parameter",
                    param="max_tokens",
                )
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in REASONING_TOKENS:
            return error_response(
                400,
                f"reasoning_effort must be one of {sorted(REASONING_TOKENS)}, got {effort!r}",
                param="reasoning_effort",
            )
        return None

    def _envelope(self, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        self._counter += 1
        return {
            "id": f"chatcmpl-test{self._counter:010d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage,
            "system_fingerprint": "fp_testserver",
        }

    def _usage(self, prompt_chars: int, completion_tokens: int, reasoning: int) -> dict[str, Any]:
        prompt_tokens = estimate_tokens(prompt_chars)
        opts = self.options
        cached = int(prompt_tokens * opts.cache_share) if prompt_tokens >= opts.cache_min_tokens else 0
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _reply(self, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> web.Response:
        self._stats.add_usage(model, usage)
        return json_response(self._envelope(model, choices, usage))

    def _generate(
        self, body: dict[str, Any], texts: list[str], messages: list[dict[str, Any]], fault: FaultKind | None
    ) -> tuple[web.Response, int, int]:
        n = body.get("n") or 1
        seed = body.get("seed")
        temperature = body.get("temperature")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        last_user = next(
            (t for m, t in zip(reversed(messages), reversed(texts), strict=True) if m.get("role") == "user"),
            texts[-1],
        )
        prefer, avoid = marker_slots(last_user, seed, n) if self.options.mark_choices else (None, None)
        model_marker = self.options.model_markers.get(body["model"])
        lines = (self.options.sample_lines[0], self.options.sample_lines[1])
        choices = []
        completion_tokens = longest = 0
        for i in range(n):
            text = sample_text(last_user, seed, i, temperature, lines)
            if i == prefer or i == avoid:  # after the first speaker, where truncation does not reach
                text = text.replace("] ", f"] {PREFER_MARKER if i == prefer else AVOID_MARKER} ", 1)
            if model_marker:
                text = text.replace("] ", f"] {model_marker} ", 1)
            text, cut = truncate(text, limit)
            tokens = estimate_tokens(len(text))
            completion_tokens += tokens
            longest = max(longest, tokens)
            choices.append(choice(i, text, "length" if cut else "stop"))
        choices, completion_tokens = distort(choices, fault, completion_tokens, limit)
        usage = self._usage(sum(map(len, texts)), completion_tokens, 0)
        return self._reply(body["model"], choices, usage), 200, longest

    def _judge(
        self, body: dict[str, Any], prompt_text: str, prompt_chars: int, fault: FaultKind | None
    ) -> tuple[web.Response, int, int]:
        blocks = find_blocks(self._pattern, prompt_text)
        if not blocks:
            return error_response(
                400,
                "test server judge: no completion blocks in the prompt; it looks for the regex "
                f'{self._pattern.pattern!r}, e.g. <completion id="A">text</completion>',
            ), 400, 0
        verdict = judge(blocks, position_bias=self.options.judge_position_bias)
        ranking = list(verdict.ranking)
        if fault is FaultKind.NON_PERMUTATION:
            ranking = ranking[:-1] + [ranking[0]] if len(ranking) > 1 else ranking * 2
        content = orjson.dumps(
            {"ranking": ranking, "confidence": verdict.confidence, "reason": verdict.reason}
        ).decode()
        if fault is FaultKind.BAD_CONTENT:
            content = content[: len(content) // 2]
        is_reasoning = body["model"] in self.options.reasoning_models
        reasoning = REASONING_TOKENS[body.get("reasoning_effort") or "medium"] if is_reasoning else 0
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        content_tokens = estimate_tokens(len(content))
        finish = "stop"
        if limit is not None and reasoning + content_tokens > limit:  # the budget went to reasoning
            content, finish, content_tokens, reasoning = "", "length", max(0, limit - reasoning), min(reasoning, limit)
        n = body.get("n") or 1
        decoded = reasoning + content_tokens  # per choice; the n choices decode side by side
        choices = [choice(i, content, finish) for i in range(n)]
        choices, content_tokens = distort(choices, fault, content_tokens * n, limit)
        usage = self._usage(prompt_chars, content_tokens + reasoning * n, reasoning * n)
        return self._reply(body["model"], choices, usage), 200, decoded
