"""A small OpenAI-compatible server for the tiny local base model and its LoRA adapters (CPU).

    python -m serving.local_server --base DIR --adapter seinfeld=DIR --adapter seinfeld-dpo=DIR \
        --host 127.0.0.1 --port 0 [--ready-file FILE]

Serves what the pipeline uses of vLLM's API, under the same model names:
- `GET /v1/models`: the base (parent null) and each adapter with `parent` = the base name;
- `POST /v1/chat/completions`: the tokenizer's chat template applied to `messages`; `n`, `temperature`,
  `top_p`, `max_tokens` / `max_completion_tokens`, `seed` (same seed, same n samples) and `stop` honoured;
  an unknown model is a 404 with an OpenAI-style error body; `stream` is refused (400).
- `GET /health`.
Once listening it prints one JSON line `{"event": "ready", "url": ..., "base_url": ..., "pid": ...}` to
stdout and writes the same object to `--ready-file` (atomically), so a caller using `--port 0` learns
the port. Generation runs in a worker thread (one request at a time) so /v1/models stays responsive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from serving.local_args import add_server_arguments
from serving.local_engine import LocalEngine, PromptTooLong, SamplingRequest

logger = logging.getLogger(__name__)

ENGINE_KEY: web.AppKey[LocalEngine] = web.AppKey("engine", LocalEngine)
DEFAULTS_KEY: web.AppKey[dict] = web.AppKey("defaults", dict)
MAX_N = 16
ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


def create_app(engine: LocalEngine, *, default_max_tokens: int = 256) -> web.Application:
    """The aiohttp application serving `engine`."""
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[ENGINE_KEY] = engine
    app[DEFAULTS_KEY] = {"max_tokens": default_max_tokens}
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model}", _get_model)
    app.router.add_post("/v1/chat/completions", _chat)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _model_card(engine: LocalEngine, name: str) -> dict:
    is_base = name == engine.base_name
    root = engine.base_dir if is_base else engine.adapters[name]
    return {
        "id": name,
        "object": "model",
        "created": engine.created,
        "owned_by": "local",
        "root": str(root),
        "parent": None if is_base else engine.base_name,
        "max_model_len": engine.max_model_len,
    }


async def _list_models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response({"object": "list", "data": [_model_card(engine, m) for m in engine.model_names]})


async def _get_model(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    name = request.match_info["model"]
    if name not in engine.model_names:
        return _unknown_model(name).response()
    return web.json_response(_model_card(engine, name))


def _unknown_model(name: str) -> RequestError:
    return RequestError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


async def _chat(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        try:
            body = await request.json()
        except ValueError as e:
            raise RequestError(400, f"the body is not JSON: {e}") from e
        sampling = parse_chat_request(body, engine.model_names, request.app[DEFAULTS_KEY]["max_tokens"])
        try:
            generation = await asyncio.to_thread(engine.generate, sampling)
        except PromptTooLong as e:
            raise RequestError(400, str(e), param="messages") from e
    except RequestError as e:
        return e.response()
    except Exception:
        logger.exception("generation failed")
        return RequestError(500, "generation failed; see the server log", kind="server_error").response()
    completion_tokens = sum(s.tokens for s in generation.samples)
    return web.json_response({
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": sampling.model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": s.text},
                "finish_reason": s.finish_reason,
                "logprobs": None,
            }
            for i, s in enumerate(generation.samples)
        ],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": generation.prompt_tokens + completion_tokens,
        },
    })


def parse_chat_request(body: Any, models: list[str], default_max_tokens: int) -> SamplingRequest:
    """Validate a chat completions body; RequestError (400/404) names the offending field."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "`model` must be a model name (see /v1/models)", param="model")
    if model not in models:
        raise _unknown_model(model)
    if body.get("stream"):
        raise RequestError(400, "`stream` is not supported by the local server; send stream=false", param="stream")
    n = _number(body, "n", 1, int, 1, MAX_N)
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, float, 1e-6, 1.0)
    max_tokens = body.get("max_completion_tokens")
    field = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, field = body.get("max_tokens"), "max_tokens"
    max_new = _number({field: max_tokens}, field, default_max_tokens, int, 1, 1 << 20)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, f"`seed` must be an integer or null; got {seed!r}", param="seed")
    return SamplingRequest(
        model=model,
        messages=_messages(body.get("messages")),
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new,
        seed=seed,
        stop=_stop(body.get("stop")),
    )


def _number(body: dict, name: str, default, kind: type, low, high):
    value = body.get(name)
    if value is None:
        return default
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not low <= value <= high:
        raise RequestError(400, f"`{name}` must be a number in [{low}, {high}]; got {value!r}", param=name)
    return kind(value)


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}] needs a role in {ROLES}", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise RequestError(400, f"messages[{i}].content must be text", param="messages")
        out.append({"role": m["role"], "content": content})
    return out


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or len(items) > 4 or not all(isinstance(s, str) and s for s in items):
        raise RequestError(400, "`stop` must be a string or a list of up to 4 non-empty strings", param="stop")
    return tuple(items)


async def serve(engine: LocalEngine, *, host: str, port: int, ready_file: Path | None,
                default_max_tokens: int = 256) -> None:
    """Serve until SIGTERM or SIGINT; announce the bound URL once listening."""
    runner = web.AppRunner(create_app(engine, default_max_tokens=default_max_tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    url = f"http://{host}:{bound_port}"
    announce = {"event": "ready", "url": url, "base_url": f"{url}/v1", "pid": os.getpid(),
                "models": engine.model_names}
    if ready_file is not None:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps(announce) + "\n")
        os.replace(tmp, ready_file)
    print(json.dumps(announce), flush=True)
    logger.info("serving %s at %s", engine.model_names, url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("stopping the local server at %s", url)
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Load the model and serve (blocking) from parsed arguments."""
    from serving.adapters import adapter_problem

    adapters: dict[str, Path] = {}
    for name, path in args.adapter:
        if name in adapters:
            raise SystemExit(f"--adapter {name} given twice; each name must be unique")
        problem = adapter_problem(path)
        if problem:  # as the vLLM server: leave it out, serve the rest
            logger.warning("leaving adapter %r out: %s", name, problem)
            continue
        adapters[name] = path
    engine = LocalEngine.load(args.base, adapters, base_name=args.served_model_name,
                              max_model_len=args.max_model_len)
    asyncio.run(serve(engine, host=args.host, port=args.port, ready_file=args.ready_file,
                      default_max_tokens=args.default_max_tokens))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.local_server", description=__doc__.split("\n")[0])
    add_server_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
