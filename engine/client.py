"""The AsyncOpenAI client every stage uses: SDK retries off (the engine retries), pool sized to concurrency."""

from __future__ import annotations

import errno
import socket

import httpx2
import openai

from engine.errors import ConfigError

PROBE_TIMEOUT_S = 10.0  # the start-up check waits this long at most, then lets the run go on


def make_client(base_url: str | None, api_key: str | None, *, timeout_s: float, concurrency: int) -> openai.AsyncOpenAI:
    """An AsyncOpenAI on the aiohttp transport (less CPU per request than the default, see NOTES).

    max_retries=0: the engine's single retry policy handles every retryable failure, so attempts,
    the shared 429 cool-down and error records are counted in one place.
    """
    limits = httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s)
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "EMPTY",
        timeout=timeout_s,
        max_retries=0,
        http_client=http_client,
    )


def refused(exc: BaseException) -> bool:
    """Whether a connection error was a refused connection (nothing listening), however the transport wraps it:
    the aiohttp transport reports one as a connect *timeout* whose cause chain holds ConnectionRefusedError."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return True
        stack += [e.__cause__, e.__context__, getattr(e, "os_error", None)]
        stack += [a for a in e.args if isinstance(a, BaseException)]
    return False


def _unresolved(exc: BaseException) -> socket.gaierror | None:
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            return None
        if isinstance(e, socket.gaierror):
            return e
        e = e.__cause__ or e.__context__ or getattr(e, "os_error", None)
    return None


async def check_endpoint(client: openai.AsyncOpenAI, *, url_setting: str, key_setting: str) -> bytes | None:
    """One free request before a run starts (GET /models), so a wrong URL or key fails at once with exit 2 and
    nothing created: a refused connection, an unknown host or a rejected key (401) raise ConfigError naming the
    setting to fix. Any other answer, or none within PROBE_TIMEOUT_S, lets the run go on (some
    OpenAI-compatible servers do not list models; the run's retry policy takes over). Returns the model list's
    body when there is one."""
    url = str(client.base_url).rstrip("/")
    try:
        return await client.with_options(timeout=PROBE_TIMEOUT_S).get("/models", cast_to=bytes)
    except openai.AuthenticationError as e:
        raise ConfigError(f"{url} rejected the API key (HTTP 401); check {key_setting}") from e
    except openai.APIConnectionError as e:  # APITimeoutError included
        if refused(e):
            raise ConfigError(
                f"connection refused by {url}: nothing is listening there; start the server, or point "
                f"{url_setting} at the right one"
            ) from e
        if (gai := _unresolved(e)) is not None:
            raise ConfigError(f"cannot resolve the host of {url} ({gai.strerror}); check {url_setting}") from e
    except openai.APIError:
        pass
    return None
