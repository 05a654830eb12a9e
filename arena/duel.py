"""Both models continue one scene with the same settings; their answers stream in side by side.

`duel()` starts one streaming chat request per model at once and yields a snapshot of both answers whenever
text arrives (coalesced to one snapshot per `tick_s`), and once more at the end. An answer whose first token
has not come after `wake_after_s` is marked "waking": a cold endpoint (Modal scales to zero) takes minutes
to start, and the page says so instead of looking hung. Every endpoint failure ends that answer with a
message a person can act on; nothing is raised to the page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import openai

from arena.limits import MAX_TOKENS
from engine.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """The settings both models get for one round."""

    temperature: float = 0.9  # the plan's sampling temperature
    max_tokens: int = 256  # at most arena.limits.MAX_TOKENS
    seed: int | None = None  # the same seed for both models; None: the server's own randomness

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2; got {self.temperature}; e.g. 0.9")
        tokens = self.max_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
            raise ConfigError(f"max_tokens must be a whole number from 1 to {MAX_TOKENS} (the arena's most tokens "
                              f"per answer); got {tokens!r}; e.g. 256")
        if self.seed is not None and not 0 <= self.seed < 2**31:
            raise ConfigError(f"seed must be between 0 and 2^31 - 1, or empty; got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Answer:
    """One model's answer as it stands: phase is waiting, waking, streaming, done or error."""

    model: str
    text: str = ""
    phase: str = "waiting"
    finish_reason: str | None = None
    error: str | None = None
    first_token_s: float | None = None
    seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "error")


async def duel(
    client: openai.AsyncOpenAI,
    prompt: list[dict[str, str]],
    models: Sequence[str],
    sampling: Sampling,
    *,
    wake_after_s: float = 5.0,
    tick_s: float = 0.05,
) -> AsyncIterator[list[Answer]]:
    """Yield copies of every model's Answer as they change; the last snapshot has every answer finished."""
    answers = [Answer(model) for model in models]
    changed = asyncio.Event()
    start = time.monotonic()
    tasks = [asyncio.create_task(_stream(client, a, prompt, sampling, changed, start)) for a in answers]
    try:
        yield [dataclasses.replace(a) for a in answers]
        while not all(a.finished for a in answers):
            waiting = any(a.phase == "waiting" for a in answers)
            wait_s = max(0.0, start + wake_after_s - time.monotonic()) if waiting else 1.0
            try:
                await asyncio.wait_for(changed.wait(), timeout=wait_s)
            except TimeoutError:
                pass
            changed.clear()
            if time.monotonic() - start >= wake_after_s:
                for a in answers:
                    if a.phase == "waiting":
                        a.phase = "waking"
            yield [dataclasses.replace(a) for a in answers]
            await asyncio.sleep(tick_s)  # coalesce the tokens of the next tick into one snapshot
        yield [dataclasses.replace(a) for a in answers]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stream(client: openai.AsyncOpenAI, answer: Answer, prompt: list[dict[str, str]], sampling: Sampling,
                  changed: asyncio.Event, start: float) -> None:
    extra = {} if sampling.seed is None else {"seed": sampling.seed}
    try:
        stream = await client.chat.completions.create(
            model=answer.model, messages=prompt, temperature=sampling.temperature,
            max_completion_tokens=sampling.max_tokens, stream=True, **extra,
        )
        try:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        if answer.first_token_s is None:
                            answer.first_token_s = round(time.monotonic() - start, 3)
                        answer.phase = "streaming"
                        answer.text += choice.delta.content
                    if choice.finish_reason:
                        answer.finish_reason = choice.finish_reason
                changed.set()
        finally:
            await stream.close()
        answer.phase = "done"
    except openai.OpenAIError as e:
        answer.error = describe_error(e, answer.model, client)
        answer.phase = "error"
        log.warning("%s: %s", answer.model, answer.error)
    except Exception as e:  # a bug or an SDK surprise: logged with its traceback, shown on the page as a line
        log.exception("%s: unexpected failure while streaming", answer.model)
        answer.error = f"unexpected error ({type(e).__name__}: {e}); the arena's log has the details"
        answer.phase = "error"
    finally:
        answer.seconds = round(time.monotonic() - start, 3)
        changed.set()


def describe_error(e: openai.OpenAIError, model: str, client: openai.AsyncOpenAI) -> str:
    """One line saying what failed and what to do about it (never the API key)."""
    causes = _causes(e)
    refused = next((c for c in causes if isinstance(c, ConnectionError)), None)  # the SDK may call it a timeout
    if isinstance(e, openai.APITimeoutError) and refused is None:
        return (f"no answer within {client.timeout} s: the endpoint may still be starting; sample again in a "
                "minute, or start the arena with a larger --timeout")
    if isinstance(e, openai.APIConnectionError):
        return (f"cannot reach the endpoint ({refused or causes[-1]}); is the server running? "
                "(check --serve-url / SERVE_URL)")
    if isinstance(e, openai.AuthenticationError):
        return "the endpoint refused the API key (401): set SERVE_API_KEY to the server's key and restart the arena"
    if isinstance(e, openai.NotFoundError):
        return f"the endpoint does not serve the model {model!r} (404): deploy it, or pass the served names"
    if isinstance(e, openai.APIStatusError):
        return f"the endpoint answered {e.status_code}: {_message(e)}"
    return f"{type(e).__name__}: {e}"


def _causes(e: BaseException) -> list[BaseException]:
    chain = [e]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return str(text)[:300]
    return (e.response.text or e.message)[:300]
