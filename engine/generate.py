"""The generate stage: n sampled completions per prompt from an OpenAI-compatible endpoint (vLLM)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

from engine.chat import chat_completion, usage_of
from engine.client import check_endpoint, make_client
from engine.errors import ConfigError, FatalError
from engine.options import RunOptions
from engine.rows import Row, check_input_file, validate_prompt_row
from engine.runner import RowContext, run_stage
from engine.summary import Counters, StageSummary

DEFAULT_SERVE_URL = "http://127.0.0.1:8000/v1"


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


class GenerateStage:
    name = "generate"
    output_name = "completions"
    input_flag = "--prompts"

    def __init__(self, settings: GenerateSettings, client: openai.AsyncOpenAI):
        self.s = settings
        self.client = client

    def settings(self) -> dict[str, Any]:
        return self.s.fingerprinted()

    def validate(self, obj: dict[str, Any]) -> dict[str, Any]:
        return validate_prompt_row(obj)

    def stop_reason(self, counters: Counters) -> str | None:
        return None

    async def process(self, row: Row, ctx: RowContext) -> dict[str, Any]:
        s = self.s
        messages = as_messages(row.data["prompt"])
        samples: list[str] = []
        finish: list[str | None] = []
        empty = 0
        requests = 0
        while len(samples) < s.n:
            if requests > s.max_extra_requests:
                raise FatalError(
                    f"got {len(samples)} usable of {s.n} samples after {requests} requests "
                    f"({empty} empty); the server may ignore n or return blank text"
                )
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
            for choice in data["choices"][:want]:
                text = choice["message"].get("content")
                if not isinstance(text, str) or not text.strip():
                    empty += 1  # a failed sample, not a failed row: topped up below
                    continue
                samples.append(text)
                finish.append(choice.get("finish_reason"))
        if empty:
            ctx.counters.extra["empty_samples"] = ctx.counters.extra.get("empty_samples", 0) + empty
        record: dict[str, Any] = {"prompt": row.data["prompt"], "completions": samples}
        if "reference" in row.data:
            record["reference"] = row.data["reference"]
        record["model"] = s.model
        record["finish_reasons"] = finish
        record["requests"] = requests
        return record


async def run_generate(
    prompts: Path,
    out_dir: Path,
    settings: GenerateSettings,
    options: RunOptions,
    *,
    api_key: str | None = None,
    resume_command: str | None = None,
) -> StageSummary:
    """Sample `settings.n` completions per prompt into out_dir/completions.jsonl (resumable)."""
    check_input_file(prompts, "--prompts")
    key = api_key or os.environ.get("SERVE_API_KEY")
    client = make_client(settings.serve_url, key, timeout_s=settings.timeout_s, concurrency=options.concurrency)
    try:
        await check_endpoint(client, url_setting="--serve-url / SERVE_URL", key_setting="SERVE_API_KEY")
        return await run_stage(GenerateStage(settings, client), prompts, out_dir, options,
                               resume_command=resume_command)
    finally:
        await client.close()
