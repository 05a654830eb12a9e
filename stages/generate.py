"""The generate stage: n sampled completions per prompt from an OpenAI-compatible endpoint (vLLM)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson

from engine.chat import chat_completion, usage_of
from engine.client import check_endpoint, make_client
from engine.errors import ConfigError, FatalError, SkipRow
from engine.options import RunOptions
from engine.rows import Row, check_input_file, validate_prompt_row
from engine.runner import RowContext, run_stage
from engine.summary import Counters, StageSummary

DEFAULT_SERVE_URL = "http://127.0.0.1:8000/v1"
# Prompt tokens without a tokenizer, counted low on purpose: characters / 6 (Llama 3 and o200k average ~4 on the
# SFT data), chat-template tokens left out. A row this count already puts over the served context cannot fit and
# is rejected before any request; a row near the limit is sent and the server's own 400 fails it.
MIN_CHARS_PER_TOKEN = 6
# The skip reason of a row the model answered only blank (forfeit_empty, as the A/B evaluation asks): every
# request came back with the choices asked for, but too few had text. A rerun with the same seeds draws the same
# blanks, so the row is finished (skipped file, never asked again) rather than failed. HTTP errors, timeouts and
# missing choices still fail the row, and a rerun retries it.
EMPTY_ANSWERS = "empty_answers"


@dataclass(frozen=True)
class GenerateSettings:
    serve_url: str = field(
        default_factory=lambda: os.environ.get("SERVE_URL", DEFAULT_SERVE_URL),
        metadata={"help": "OpenAI-compatible base URL ending in /v1 (env SERVE_URL)"},
    )
    model: str = field(default="seinfeld", metadata={"help": "served model (adapter) name"})
    n: int = field(default=3, metadata={"help": "completions per prompt"})
    temperature: float = field(default=0.9, metadata={"help": "sampling temperature"})
    max_tokens: int = field(default=256, metadata={"help": "most tokens per completion"})
    seed: int | None = field(default=None, metadata={"help": "base seed; each row gets seed + hash(row id)"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-request timeout"})
    max_extra_requests: int = field(
        default=3, metadata={"help": "top-up requests when the server returns fewer usable samples than n"}
    )

    def __post_init__(self) -> None:
        if not self.serve_url.startswith(("http://", "https://")):
            raise ConfigError(f"serve_url must be an http(s) URL, got {self.serve_url!r}; set --serve-url or SERVE_URL")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}; pass --n 3")
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not self.model:
            raise ConfigError("model must be a non-empty served model name, e.g. --model seinfeld")

    def fingerprinted(self) -> dict[str, Any]:
        """What changes the samples: the endpoint URL and timeout do not (a redeploy may move the URL)."""
        d = asdict(self)
        for key in ("serve_url", "timeout_s", "max_extra_requests"):
            d.pop(key)
        return d


def as_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A plain-string prompt is sent as one user message (the chat endpoint needs messages)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def prompt_tokens_at_least(messages: list[dict[str, str]]) -> int:
    """A count of the prompt's tokens that undercounts real text (MIN_CHARS_PER_TOKEN); no tokenizer."""
    return math.floor(sum(len(m["content"]) for m in messages) / MIN_CHARS_PER_TOKEN)


def served_context(models_body: bytes | None, model: str) -> int | None:
    """vLLM's `max_model_len` for `model` from a /v1/models body: the model's card, else its parent's (an
    adapter's card may not carry it); None when the server does not say."""
    try:
        cards = {c["id"]: c for c in orjson.loads(models_body or b"null")["data"]}
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    card = cards.get(model) or {}
    length = card.get("max_model_len") or (cards.get(card.get("parent")) or {}).get("max_model_len")
    return length if isinstance(length, int) and length > 0 else None


class GenerateStage:
    name = "generate"
    output_name = "completions"
    input_flag = "--prompts"

    def __init__(self, settings: GenerateSettings, client: openai.AsyncOpenAI, max_model_len: int | None = None,
                 *, forfeit_empty: bool = False):
        self.s = settings
        self.client = client
        self.max_model_len = max_model_len  # the served context; None: not known, nothing checked here
        self.forfeit_empty = forfeit_empty  # a row answered only blank is skipped (EMPTY_ANSWERS), not failed

    def settings(self) -> dict[str, Any]:
        return self.s.fingerprinted()

    def validate(self, obj: dict[str, Any]) -> dict[str, Any]:
        row = validate_prompt_row(obj)
        if self.max_model_len is not None:
            tokens = prompt_tokens_at_least(as_messages(row["prompt"]))
            if tokens + self.s.max_tokens > self.max_model_len:
                raise ValueError(
                    f"prompt too long for {self.s.model}: at least ~{tokens:,} tokens (characters / "
                    f"{MIN_CHARS_PER_TOKEN}) + max_tokens {self.s.max_tokens:,} > the served context "
                    f"(max_model_len {self.max_model_len:,}); shorten the prompt or lower --max-tokens"
                )
        return row

    def stop_reason(self, counters: Counters) -> str | None:
        return None

    async def process(self, row: Row, ctx: RowContext) -> dict[str, Any]:
        s = self.s
        messages = as_messages(row.data["prompt"])
        samples: list[str] = []
        finish: list[str | None] = []
        empty = 0
        short = 0  # choices asked for but not returned (a server that ignores n), unlike blank answers
        requests = 0
        while len(samples) < s.n:
            if requests > s.max_extra_requests:
                problem = f"got {len(samples)} usable of {s.n} samples after {requests} requests ({empty} empty)"
                if self.forfeit_empty and not short:
                    self._count_empty(ctx, empty)
                    raise SkipRow(EMPTY_ANSWERS, {"prompt": row.data["prompt"], "completions": samples,
                                                  "model": s.model, "requests": requests,
                                                  "problem": f"{s.model}: {problem}; no answer had text"})
                raise FatalError(f"{problem}; the server may ignore n or return blank text")
            want = s.n - len(samples)
            seed = None if s.seed is None else (s.seed + int(row.id[:8], 16) + 1000 * requests) % 2**31

            payload: dict[str, Any] = {
                "model": s.model,
                "messages": messages,
                "n": want,
                "temperature": s.temperature,
                "max_completion_tokens": s.max_tokens,
            }
            if seed is not None:
                payload["seed"] = seed
            data = await ctx.request(lambda payload=payload: chat_completion(self.client, payload))
            requests += 1
            u = usage_of(data)
            ctx.counters.add_usage(u.tokens_in, u.tokens_out, u.tokens_cached)
            short += max(0, want - len(data["choices"]))
            for choice in data["choices"][:want]:
                text = choice["message"].get("content")
                if not isinstance(text, str) or not text.strip():
                    empty += 1  # a failed sample, not a failed row: topped up below
                    continue
                samples.append(text)
                finish.append(choice.get("finish_reason"))
        self._count_empty(ctx, empty)
        record: dict[str, Any] = {"prompt": row.data["prompt"], "completions": samples}
        if "reference" in row.data:
            record["reference"] = row.data["reference"]
        record["model"] = s.model
        record["finish_reasons"] = finish
        record["requests"] = requests
        return record

    @staticmethod
    def _count_empty(ctx: RowContext, empty: int) -> None:
        if empty:
            ctx.counters.extra["empty_samples"] = ctx.counters.extra.get("empty_samples", 0) + empty


async def run_generate(
    prompts: Path,
    out_dir: Path,
    settings: GenerateSettings,
    options: RunOptions,
    *,
    api_key: str | None = None,
    resume_command: str | None = None,
    forfeit_empty: bool = False,
) -> StageSummary:
    """Sample `settings.n` completions per prompt into out_dir/completions.jsonl (resumable).

    `forfeit_empty`: a row the model answers only blank after its top-ups is finished in
    completions.skipped.jsonl (reason EMPTY_ANSWERS) instead of failed, so a rerun does not ask again.
    """
    check_input_file(prompts, "--prompts")
    key = api_key or os.environ.get("SERVE_API_KEY")
    client = make_client(settings.serve_url, key, timeout_s=settings.timeout_s, concurrency=options.concurrency)
    try:
        models = await check_endpoint(client, url_setting="--serve-url / SERVE_URL", key_setting="SERVE_API_KEY")
        stage = GenerateStage(settings, client, served_context(models, settings.model),
                              forfeit_empty=forfeit_empty)
        return await run_stage(stage, prompts, out_dir, options, resume_command=resume_command)
    finally:
        await client.close()
