"""Response bodies: OpenAI-style errors, choices, and the content faults applied to well-formed choices."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from testserver.faults import STATUS_FAULTS, FaultKind
from testserver.responders import estimate_tokens

# (error type, code, message) per status fault, as OpenAI words them.
ERRORS: dict[FaultKind, tuple[str, str | None, str]] = {
    FaultKind.RATE_LIMIT: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    FaultKind.QUOTA: (
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    FaultKind.SERVER_ERROR: ("server_error", None, "The server had an error while processing your request."),
    FaultKind.BAD_GATEWAY: ("server_error", None, "Bad gateway."),
    FaultKind.UNAVAILABLE: ("server_error", None, "The engine is currently overloaded, please try again later."),
    FaultKind.GATEWAY_TIMEOUT: ("server_error", None, "Gateway timeout."),
    FaultKind.BAD_REQUEST: ("invalid_request_error", None, "Invalid request (injected fault)."),
    FaultKind.UNAUTHORIZED: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    FaultKind.FORBIDDEN: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    FaultKind.NOT_FOUND: ("invalid_request_error", "model_not_found", "The model does not exist."),
    FaultKind.UNPROCESSABLE: ("invalid_request_error", None, "Unprocessable entity (injected fault)."),
}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_response(body, status, headers)


def status_fault(fault: FaultKind, retry_after: float | None) -> web.Response:
    """The error response of a status fault; a 429 carries `retry-after` unless `retry_after` is None."""
    type_, code, message = ERRORS[fault]
    headers = None
    if fault is FaultKind.RATE_LIMIT and retry_after is not None:
        headers = {"retry-after": str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)}
    return error_response(STATUS_FAULTS[fault], message, type_=type_, code=code, headers=headers)


def choice(index: int, content: str | None, finish: str, refusal: str | None = None) -> dict[str, Any]:
    """One chat.completion choice."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
        "logprobs": None,
        "finish_reason": finish,
    }


def distort(
    choices: list[dict[str, Any]], fault: FaultKind | None, content_tokens: int, limit: int | None
) -> tuple[list[dict[str, Any]], int]:
    """Apply a content fault (fewer_choices, empty, refusal, length_empty) to well-formed choices.

    Returns the choices and the content tokens they stand for (reasoning tokens are counted apart).
    """
    n = len(choices)
    if fault is FaultKind.FEWER_CHOICES:
        return (choices[:1] if n > 1 else []), content_tokens
    if fault is FaultKind.EMPTY:
        return [choice(i, "" if i % 2 == 0 else " \n ", "stop") for i in range(n)], n
    if fault is FaultKind.REFUSAL:
        refusal = "I'm sorry, but I can't help with that request."
        return [choice(i, None, "stop", refusal) for i in range(n)], estimate_tokens(len(refusal)) * n
    if fault is FaultKind.LENGTH_EMPTY:
        return [choice(i, "", "length") for i in range(n)], (limit if limit is not None else 256) * n
    return choices, content_tokens
