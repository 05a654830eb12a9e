"""The judge stage's settings: one validated dataclass shared by `judge` and `estimate`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError
from stages.judge.backends import DEFAULT_BACKEND, REGISTRY, backend_named, backend_names, backend_of
from stages.judge.cost import FREE, Prices, base_model, known_prices
from stages.judge.prompt import PROMPT_VERSION

BACKENDS = tuple(REGISTRY)  # the names (stages/judge/backends.py holds what each one does)
# The reasoning_effort values each judge model takes (a dated snapshot as its model): GPT-5 takes minimal, low,
# medium, high and refuses any other with a 400 (NOTES: OpenAI SDK 3.x and GPT-5); mini and nano are the same
# family. In batch mode that 400 would come back on every row only when the batch ends, so it is checked here.
GPT5_EFFORTS = ("minimal", "low", "medium", "high")
MODEL_EFFORTS: dict[str, tuple[str, ...]] = dict.fromkeys(("gpt-5", "gpt-5-mini", "gpt-5-nano"), GPT5_EFFORTS)
# Any other model (a local judge, a newer family): the values OpenAI's API defines; that model's server decides.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
DEFAULT_JUDGE_MODEL = "gpt-5"
MODES = ("live", "batch")
BATCH_MAX_REQUESTS = 50_000  # the Batch API's limits per input file (NOTES: OpenAI SDK 3.x and GPT-5) ...
BATCH_API_MAX_BYTES = 200_000_000  # ... and 200 MB, decimal (NOTES: OpenAI Batch API limits), not 200 MiB
# The largest input file written: the packer fills a file to this byte exactly (batch_chunks.py), so the 5% below
# the API's limit is a margin for how the API counts its 200 MB, which the notes do not pin down to the byte.
BATCH_MAX_BYTES = 190_000_000
# An organisation's Batch API queue holds at most so many input tokens per model in batches not finished; a batch
# over it fails validation with token_limit_exceeded (NOTES: OpenAI Batch API limits). The notes give no figure:
# gpt-5's tier-1 limit is published as 1,500,000 (a third-party copy of OpenAI's table; see your organisation's
# Limits page), and the default is 10% under it for the error of counting characters / 4.
BATCH_MAX_ENQUEUED_TOKENS = 1_350_000


def reasoning_efforts(model: str) -> tuple[str, ...]:
    """The reasoning_effort values `model` takes (MODEL_EFFORTS; REASONING_EFFORTS for a model not listed)."""
    return MODEL_EFFORTS.get(model) or MODEL_EFFORTS.get(base_model(model)) or REASONING_EFFORTS


@dataclass(frozen=True)
class JudgeSettings:
    backend: str = field(
        default=DEFAULT_BACKEND, metadata={"help": "; ".join(f"{b.name}: {b.help}" for b in REGISTRY.values())}
    )
    judge_model: str = field(
        default_factory=lambda: os.environ.get("JUDGE_MODEL") or DEFAULT_JUDGE_MODEL,
        metadata={"help": "judge model (env JUDGE_MODEL, default gpt-5)"},
    )
    judge_url: str | None = field(
        default_factory=lambda: os.environ.get("OPENAI_BASE_URL") or None,
        metadata={"help": "OpenAI-compatible base URL (env OPENAI_BASE_URL; unset: api.openai.com)"},
    )
    reasoning_effort: str = field(
        default="low",
        metadata={"help": "reasoning effort, one the judge model takes: gpt-5 (mini, nano) minimal, low, medium, high"},
    )
    max_completion_tokens: int = field(
        default=4096, metadata={"help": "first output budget per request, reasoning included"}
    )
    max_completion_tokens_cap: int = field(
        default=16384,
        metadata={"help": "an empty answer cut by 'length' is retried with double the budget, up to this"},
    )
    swap_check: bool = field(
        default=False, metadata={"help": "judge again in reversed order; keep the pair only if best and worst agree"}
    )
    max_cost_usd: float | None = field(
        default=None,
        metadata={"help": "USD for the run as a whole, reruns included: stop scheduling rows once its spend would "
                  "pass this"},
    )
    min_confidence: int | None = field(
        default=None, metadata={"help": "drop (and record) pairs the judge rates below this confidence (1-5)"}
    )
    prices: Prices | None = field(
        default=None, metadata={"help": "USD per 1M tokens; None: the table's price for judge_model"}
    )
    expected_output_tokens: int | None = field(
        default=None,
        metadata={"help": "output tokens per request assumed by `estimate` and the --max-cost forecast "
                          "(None: a guess per reasoning effort)"},
    )
    timeout_s: float = field(default=300.0, metadata={"help": "per-request timeout"})
    mode: str = field(
        default="live",
        metadata={"help": "live: one request per row as rows come; batch: OpenAI's Batch API (half price, "
                          "answers within 24 h; stages/judge/batch.py)"},
    )
    finish_live: bool = field(
        default=False, metadata={"help": "batch mode: rows the first batch round leaves undone are judged live"}
    )
    poll_interval_s: float = field(default=30.0, metadata={"help": "batch mode: seconds between status polls"})
    batch_max_requests: int = field(
        default=BATCH_MAX_REQUESTS, metadata={"help": "batch mode: most requests per input file (API limit 50,000)"}
    )
    batch_max_bytes: int = field(
        default=BATCH_MAX_BYTES,
        metadata={"help": "batch mode: largest input file in bytes (the API's limit is 200 MB: 200,000,000 bytes)"},
    )
    batch_max_enqueued_tokens: int = field(
        default=BATCH_MAX_ENQUEUED_TOKENS,
        metadata={
            "help": "batch mode: most input tokens (counted as `estimate` counts them) in this folder's batches not "
            "finished yet; later chunks wait. Set it to your organisation's Batch queue limit for the judge model "
            "(default: 10% under gpt-5's tier-1 1.5M)"
        },
    )
    batch_in_flight: int = field(
        default=4,
        metadata={
            "help": "batch mode: chunks are cut to 1/N of batch_max_enqueued_tokens, so N batches run at once within "
            "the queue's limit and each one that finishes frees room for the next (1: one batch the size of the "
            "whole limit at a time)"
        },
    )
    batch_requeue_wait_s: float = field(
        default=60.0,
        metadata={
            "help": "batch mode: a batch the API refused for the queue's token limit (token_limit_exceeded, not an "
            "attempt) is created again after up to this wait (half fixed, half random), doubled per refusal up to 32x"
        },
    )

    def __post_init__(self) -> None:
        def rule(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        backend = backend_named(self.backend)  # ConfigError naming the known backends
        rule(bool(self.judge_model), "judge_model must be a non-empty model name, e.g. --judge-model gpt-5")
        rule(
            self.judge_url is None or self.judge_url.startswith(("http://", "https://")),
            f"judge_url must be an http(s) URL ending in /v1, got {self.judge_url!r}; set --judge-url or "
            "OPENAI_BASE_URL, or unset both for api.openai.com",
        )
        efforts = reasoning_efforts(self.judge_model)
        rule(
            self.reasoning_effort in efforts,
            f"reasoning_effort must be one of {list(efforts)} for judge model {self.judge_model!r}, got "
            f"{self.reasoning_effort!r}; pass --reasoning-effort low (or another of those)",
        )
        rule(
            self.max_completion_tokens >= 16,
            f"max_completion_tokens must be >= 16 (it covers reasoning too), got {self.max_completion_tokens}",
        )
        rule(
            self.max_completion_tokens_cap >= self.max_completion_tokens,
            f"max_completion_tokens_cap ({self.max_completion_tokens_cap}) must be >= max_completion_tokens "
            f"({self.max_completion_tokens}); raise --max-completion-tokens-cap",
        )
        rule(
            self.max_cost_usd is None or self.max_cost_usd > 0,
            f"max_cost_usd must be > 0 or unset, got {self.max_cost_usd}; omit --max-cost for no cap",
        )
        rule(
            self.min_confidence is None or 1 <= self.min_confidence <= 5,
            f"min_confidence must be 1-5 or unset, got {self.min_confidence}",
        )
        rule(
            self.expected_output_tokens is None or self.expected_output_tokens >= 1,
            f"expected_output_tokens must be >= 1 or unset, got {self.expected_output_tokens}",
        )
        rule(self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}")
        rule(self.mode in MODES, f"mode must be one of {list(MODES)}, got {self.mode!r}")
        rule(
            self.mode == "live" or backend.sends_requests,
            f"mode 'batch' needs a backend that sends requests ({', '.join(backend_names(sends_requests=True))}); "
            f"the {self.backend} judge sends none; use --mode live",
        )
        rule(1 <= self.batch_in_flight <= 1000, f"batch_in_flight must be 1-1000, got {self.batch_in_flight}")
        rule(not self.finish_live or self.mode == "batch", "finish_live applies to mode 'batch' only")
        rule(self.poll_interval_s > 0, f"poll_interval_s must be > 0, got {self.poll_interval_s}")
        rule(
            1 <= self.batch_max_requests <= BATCH_MAX_REQUESTS,
            f"batch_max_requests must be 1-{BATCH_MAX_REQUESTS:,} (the Batch API limit), got {self.batch_max_requests}",
        )
        rule(
            1 <= self.batch_max_bytes <= BATCH_MAX_BYTES,
            f"batch_max_bytes must be 1-{BATCH_MAX_BYTES:,} (5% under the Batch API's {BATCH_API_MAX_BYTES:,} bytes "
            f"per file), got {self.batch_max_bytes:,}; omit it for the largest",
        )
        rule(
            self.batch_max_enqueued_tokens >= 1,
            f"batch_max_enqueued_tokens must be >= 1, got {self.batch_max_enqueued_tokens}; set it to the Batch "
            "queue limit of your organisation's Limits page for the judge model, or omit it",
        )
        rule(self.batch_requeue_wait_s > 0, f"batch_requeue_wait_s must be > 0, got {self.batch_requeue_wait_s}")
        if not backend.sends_requests:
            object.__setattr__(self, "prices", FREE)
        elif self.prices is None:
            prices = known_prices(self.judge_model)
            rule(
                prices is not None,
                f"no price is known for judge model {self.judge_model!r} (known: gpt-5, gpt-5-mini, gpt-5-nano); "
                "pass --price-in, --price-cached-in and --price-out in USD per 1M tokens (0 for a free local judge)",
            )
            object.__setattr__(self, "prices", prices)

    @property
    def price(self) -> Prices:
        assert self.prices is not None  # resolved in __post_init__
        return self.prices

    @property
    def billed_price(self) -> Prices:
        """What a request costs in this mode: the Batch API bills half of every live price."""
        return self.price.batch() if self.mode == "batch" else self.price

    @property
    def model_label(self) -> str:
        """The judge named in every output row: the backend's own model (an offline one), else judge_model."""
        return backend_of(self).model or self.judge_model

    @property
    def batch_chunk_tokens(self) -> int:
        """Input tokens one batch carries at most: the queue's share of one of `batch_in_flight` batches."""
        return max(1, self.batch_max_enqueued_tokens // self.batch_in_flight)

    def fingerprinted(self) -> dict[str, Any]:
        """What changes the judgments. URL, budgets, timeout, prices, the spending cap and --min-confidence (a
        filter on judgments in hand, applied at the start of each run) do not."""
        d: dict[str, Any] = {
            "backend": self.backend,
            "judge_model": self.model_label,
            "prompt_version": PROMPT_VERSION,
            "swap_check": self.swap_check,
        }
        if backend_of(self).takes_reasoning_effort:
            d["reasoning_effort"] = self.reasoning_effort
        return d
