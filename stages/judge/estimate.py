"""`estimate`: the requests, tokens and dollars a judge run would take, before anything is spent.

Input tokens are counted from the exact requests the judge would send (the same prompt builder, the
same shuffle), as characters / CHARS_PER_TOKEN: no tokenizer download. Output tokens cannot be known
before the judge answers, so they are an assumption per reasoning effort (or --expected-output-tokens),
shown beside a hard upper bound: every request spending its whole first budget.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.errors import ConfigError
from engine.rows import BOM, Reject, check_input_file, parse_line
from stages.judge.backends import backend_named, backend_of
from stages.judge.cost import BATCH_DISCOUNT
from stages.judge.prompt import build_messages, prepare_candidates, response_format, shown_order
from stages.judge.rows import validate_completions_row
from stages.judge.settings import JudgeSettings

# Measured with o200k_base on the real SFT validation set's judge requests: 3.99 characters per token overall,
# 4.44 on the rubric's prose (the shared, cacheable prefix).
CHARS_PER_TOKEN = 4.0
PROSE_CHARS_PER_TOKEN = 4.4
MESSAGE_OVERHEAD_TOKENS = 4  # per chat message (role and separators)
REPLY_PRIMING_TOKENS = 3
ANSWER_TOKENS = 60  # {"ranking": [...], "confidence": n, "reason": one sentence}
# Reasoning tokens per request assumed for each effort: a guess for a 3-way ranking, not a measurement.
REASONING_GUESS = {"none": 0, "minimal": 0, "low": 800, "medium": 2500, "high": 6000, "xhigh": 12000}
CACHE_MIN_TOKENS = 1024  # OpenAI caches prompt prefixes from 1,024 tokens ...
CACHE_STEP_TOKENS = 128  # ... in steps of 128
# Most input tokens per request, by model-name prefix (published: GPT-5's 400k window keeps 128k for output).
MAX_INPUT_TOKENS = {"gpt-5": 272_000}
INVALID_SHOWN = 20  # invalid lines named one by one (`file:line: problem`, as the judge logs them); the rest counted


def count_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def request_tokens(body: dict[str, Any]) -> int:
    """The input tokens of one judge request body (messages and JSON schema), counted as above: what `estimate`
    sums, and what batch mode counts against the queue's enqueued-token cap."""
    messages = body["messages"]
    chars = sum(len(m["content"]) for m in messages) + len(orjson.dumps(body["response_format"]))
    return count_tokens(chars) + MESSAGE_OVERHEAD_TOKENS * len(messages) + REPLY_PRIMING_TOKENS


def output_tokens_per_request(settings: JudgeSettings) -> tuple[int, str]:
    """(tokens, how that number was chosen)."""
    if settings.expected_output_tokens is not None:
        return settings.expected_output_tokens, "given with --expected-output-tokens"
    reasoning = REASONING_GUESS[settings.reasoning_effort]
    return reasoning + ANSWER_TOKENS, (
        f"assumed: ~{reasoning:,} reasoning tokens at effort {settings.reasoning_effort!r} + ~{ANSWER_TOKENS} "
        "for the answer; a guess, measure a pilot run (report.md) and pass --expected-output-tokens"
    )


@dataclass(frozen=True)
class Estimate:
    completions: Path
    backend: str
    model: str
    reasoning_effort: str | None
    swap_check: bool
    prices: dict[str, float]
    rows: int  # valid, distinct rows read (within the limit)
    rows_to_judge: int
    skipped: dict[str, int]  # rows the judge would skip, by reason (no request)
    invalid: int  # lines the judge would reject
    requests: int
    tokens_in: int
    tokens_cached: int
    tokens_out: int  # expected
    tokens_out_max: int  # every request at its first budget
    output_per_request: int
    output_basis: str
    shared_prefix_tokens: int
    cost_usd: float  # expected
    cost_max_usd: float
    notes: list[str] = field(default_factory=list)
    over_context: int = 0  # rows whose request would exceed the judge model's input limit (MAX_INPUT_TOKENS)
    mode: str = "live"  # batch: the prices are the Batch API's (BATCH_DISCOUNT of live)
    invalid_lines: list[str] = field(default_factory=list)  # the first INVALID_SHOWN: `file:line: problem`

    @property
    def cost_per_row_usd(self) -> float:
        return self.cost_usd / self.rows if self.rows else 0.0

    @property
    def cost_per_paid_row_usd(self) -> float:
        """Per row that sends a request (skipped rows are free): the --max-cost forecast's prior."""
        return self.cost_usd / self.rows_to_judge if self.rows_to_judge else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["completions"] = str(self.completions)
        d["cost_per_row_usd"] = self.cost_per_row_usd
        d["cost_per_paid_row_usd"] = self.cost_per_paid_row_usd
        return d

    def render(self) -> str:
        backend = backend_named(self.backend)
        judge = backend.estimate_label or f"{self.model} (reasoning effort {self.reasoning_effort})"
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        lines = [
            f"Estimate for judging {self.completions} with {judge}"
            + (", with --swap-check (two requests per row)" if self.swap_check else ""),
            f"  rows:     {self.rows:,} ({self.rows_to_judge:,} to judge; skipped without a request: {skipped}"
            + (f"; {self.invalid} invalid line(s)" if self.invalid else "") + ")",
        ]
        if self.invalid:
            lines.append("  invalid lines (the judge would set them aside in its rejects file, unsent):")
            lines += [f"    {where}" for where in self.invalid_lines]
            if self.invalid > len(self.invalid_lines):
                lines.append(f"    ... and {self.invalid - len(self.invalid_lines)} more")
        if not backend.sends_requests:  # no requests, nothing to price
            return "\n".join(lines)
        p = self.prices
        lines += [
            f"  requests: {self.requests:,} (length retries would add more)",
            f"  input:    {_m(self.tokens_in)} tokens, of which {_m(self.tokens_cached)} from the prompt cache",
            f"  output:   {_m(self.tokens_out)} tokens expected ({self.output_per_request:,} per request, "
            f"reasoning included); at most {_m(self.tokens_out_max)} if every request used its whole first budget "
            "(the judge's budget; length retries aside)",
            f"  cost:     ${self.cost_usd:,.2f} expected, at most ${self.cost_max_usd:,.2f} "
            f"(per 1M tokens: ${p['input_per_m']:g} in, ${p['cached_input_per_m']:g} cached in, "
            f"${p['output_per_m']:g} out"
            + (f", Batch API prices: {BATCH_DISCOUNT:.0%} of live, which would cost "
               f"${self.cost_usd / BATCH_DISCOUNT:,.2f})" if self.mode == "batch" else ")"),
            "How the tokens were counted:",
            f"  - input: the exact requests the judge would send (rubric, brief, scene, shuffled completion blocks, "
            f"JSON schema), as characters / {CHARS_PER_TOKEN:g} + {MESSAGE_OVERHEAD_TOKENS} per message (o200k "
            "gave 3.99 characters per token on the real SFT data); no tokenizer is loaded.",
            f"  - cached input: every request after the first is assumed to hit the prompt cache for the prefix "
            f"all rows share ({self.shared_prefix_tokens:,} tokens; caching starts at {CACHE_MIN_TOKENS:,} tokens, "
            f"in {CACHE_STEP_TOKENS}-token steps; hits are likely, not guaranteed).",
            f"  - output: {self.output_basis}.",
        ]
        lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def estimate(completions: Path, settings: JudgeSettings, limit: int | None = None) -> Estimate:
    """Read the completions file and forecast a judge run over its first `limit` valid rows. No requests."""
    check_input_file(completions, "--completions")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 or unset, got {limit}")
    backend = backend_of(settings)
    passes = 2 if settings.swap_check else 1
    per_request_out, basis = output_tokens_per_request(settings)
    rows = invalid = requests = tokens_in = 0
    invalid_lines: list[str] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    prefix: str | None = None
    limit_in = next((n for name, n in MAX_INPUT_TOKENS.items() if settings.judge_model.startswith(name)), None)
    too_long: list[int] = []  # line numbers
    with open(completions, "rb") as f:
        for lineno, raw in enumerate(f):
            if lineno == 0:
                raw = raw.removeprefix(BOM)
            if not raw.strip():
                continue
            parsed = parse_line(str(completions), lineno + 1, raw.rstrip(b"\r\n"), validate_completions_row)
            if isinstance(parsed, Reject):  # the judge's own check and wording
                invalid += 1
                if len(invalid_lines) < INVALID_SHOWN:
                    invalid_lines.append(parsed.where)
                continue
            data, row_id = parsed.data, parsed.id
            if row_id in seen:
                continue  # the judge processes a repeated prompt once
            seen.add(row_id)
            rows += 1
            if limit is not None and rows > limit:
                rows -= 1
                break
            cands = prepare_candidates(data["completions"])
            if len(cands) < 2:
                skipped["fewer_than_two_distinct"] += 1
                continue
            if backend.needs_reference and not data.get("reference"):
                skipped["no_reference"] += 1  # as the judge's JudgeStage.candidates skips it
                continue
            if not backend.sends_requests:
                continue
            order = shown_order(row_id, len(cands))
            messages = build_messages(data["prompt"], [cands.texts[p] for p in order])
            tokens = request_tokens({"messages": messages, "response_format": response_format(len(cands))})
            requests += passes
            tokens_in += tokens * passes
            if limit_in is not None and tokens > limit_in:
                too_long.append(lineno + 1)
            text = messages[0]["content"] + "\x00" + messages[1]["content"]
            prefix = text if prefix is None else os.path.commonprefix([prefix, text])
    to_judge = rows - sum(skipped.values())
    shared = math.floor(len(prefix) / PROSE_CHARS_PER_TOKEN) if prefix is not None else 0
    cacheable = shared // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS if shared >= CACHE_MIN_TOKENS else 0
    tokens_cached = cacheable * max(0, requests - 1) if to_judge > 1 else 0
    tokens_out = per_request_out * requests
    tokens_out_max = max(settings.max_completion_tokens, per_request_out) * requests
    price = settings.billed_price  # batch mode: half of every live price
    notes = []
    if per_request_out >= settings.max_completion_tokens:
        notes.append(
            f"the expected output per request ({per_request_out:,}) does not fit the first budget "
            f"({settings.max_completion_tokens:,} max_completion_tokens): answers would be cut and retried with a "
            "larger budget, paying for both; raise --max-completion-tokens"
        )
    if too_long:
        lines = ", ".join(f"{completions}:{n}" for n in too_long[:5]) + (", ..." if len(too_long) > 5 else "")
        notes.append(
            f"WARNING: {len(too_long)} row(s) exceed {settings.judge_model}'s context ({limit_in:,} input tokens, "
            f"counted as above): the judge would send them and they would fail; shorten or drop them ({lines})"
        )
    if shared and shared < CACHE_MIN_TOKENS:
        notes.append(f"the shared prefix ({shared:,} tokens) is below {CACHE_MIN_TOKENS:,}: no prompt caching")
    return Estimate(
        completions=completions,
        backend=settings.backend,
        model=settings.model_label,
        reasoning_effort=settings.reasoning_effort if backend.takes_reasoning_effort else None,
        swap_check=settings.swap_check,
        prices=asdict(price),
        rows=rows,
        rows_to_judge=to_judge,
        skipped=dict(skipped),
        invalid=invalid,
        requests=requests,
        tokens_in=tokens_in,
        tokens_cached=tokens_cached,
        tokens_out=tokens_out,
        tokens_out_max=tokens_out_max,
        output_per_request=per_request_out,
        output_basis=basis,
        shared_prefix_tokens=shared,
        cost_usd=price.cost(tokens_in, tokens_cached, tokens_out),
        cost_max_usd=price.cost(tokens_in, tokens_cached, tokens_out_max),
        notes=notes,
        over_context=len(too_long),
        mode=settings.mode,
        invalid_lines=invalid_lines,
    )
