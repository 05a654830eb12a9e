"""The judge stage: rank each row's completions, keep best as chosen and worst as rejected (TRL preference rows).

Per row: drop empty and duplicate completions (fewer than two left: skipped with the reason), show the rest
in an order shuffled by the row id, ask the judge for a full ranking (strict JSON), map it back to the
input's completions, optionally judge again in reversed order (--swap-check) and keep the pair only when
both agree on best and worst, and drop pairs below --min-confidence. Dropped pairs go to the skipped file
with the full record, so nothing is filtered silently. Every request's tokens are priced as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import openai
import orjson

from engine.chat import post_chat, usage_of
from engine.checkpoint import Checkpoint
from engine.client import check_endpoint, make_client
from engine.errors import ConfigError, FatalError, SkipRow
from engine.options import RunOptions
from engine.rows import Row, check_input_file
from engine.runner import RowContext, run_stage
from engine.summary import Counters, StageSummary
from stages.judge.answer import Verdict, read_answer
from stages.judge.backends import Judgement, backend_names, backend_of
from stages.judge.batch_state import uncollected_batches
from stages.judge.cost import RowUsage
from stages.judge.estimate import Estimate, estimate, request_tokens
from stages.judge.filters import LOW_CONFIDENCE, apply_min_confidence, low_confidence_detail, passes
from stages.judge.prompt import (
    PROMPT_VERSION,
    Candidates,
    build_messages,
    label,
    prepare_candidates,
    response_format,
    shown_order,
)
from stages.judge.report import write_report
from stages.judge.rows import validate_completions_row
from stages.judge.settings import JudgeSettings

__all__ = ["Estimate", "JudgeSettings", "JudgeStage", "Judgement", "estimate", "run_judge_live"]

log = logging.getLogger(__name__)

PRIOR_WEIGHT_ROWS = 2.0  # the --max-cost forecast counts the pre-run estimate as this many observed rows
PRIOR_SAMPLE_ROWS = 200  # rows of the input the pre-run estimate reads
_WAIT = object()  # the budget cannot tell yet: wait for a row in flight to finish


def spent_before(checkpoint: Checkpoint) -> float:
    """What earlier runs of this output paid: each judged row's usage (kept, filtered out, or redone after its input
    changed) and each failed row's billed attempts (read line by line: a 100k-row output is not loaded whole)."""
    total = 0.0
    for path in (checkpoint.results, checkpoint.skipped, checkpoint.superseded, checkpoint.errors):
        if not path.exists():
            continue
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line: the runner repairs it
                if not isinstance(record, dict):
                    continue
                usage = (record.get("judge") or {}).get("usage") or {}  # a judged row (kept, filtered or redone)
                total += float(usage.get("cost_usd") or record.get("cost_usd") or 0.0)  # or a failed one
    return total


def judgement(order: list[int], ids: list[str], verdict: Verdict, model_version: str | None) -> Judgement:
    """A model's verdict over candidates shown in `order` (ids A, B, ...), mapped back to candidate positions."""
    ranking = [order[ids.index(x)] for x in verdict.ranking]
    return Judgement(order, ranking, verdict.ranking, verdict.confidence, verdict.reason, model_version)


def _bump(counters: Counters, key: str, by: float = 1) -> None:
    counters.extra[key] = counters.extra.get(key, 0) + by


class JudgeStage:
    name = "judge"
    output_name = "preferences"
    input_flag = "--completions"

    def __init__(
        self,
        settings: JudgeSettings,
        client: openai.AsyncOpenAI | None,
        *,
        prior_row_cost: float = 0.0,
        secret: str | None = None,
    ):
        if backend_of(settings).sends_requests and client is None:
            raise ConfigError(f"the {settings.backend} judge backend needs a client")
        self.s = settings
        self.client = client
        self.prior_row_cost = prior_row_cost
        self._admitted = 0
        self._paid_rows = 0  # finished rows that were billed something: the forecast's sample
        self._paid_cost = 0.0
        self.spent_before = 0.0  # with a spending cap: what earlier runs of this output paid (before_run)
        self._row_done = asyncio.Event()
        self._secret = secret if secret and len(secret) >= 8 else None  # never echoed into an error record

    # -- the Stage protocol -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return self.s.fingerprinted()

    def validate(self, obj: dict[str, Any]) -> dict[str, Any]:
        return validate_completions_row(obj)

    def before_run(self, checkpoint: Checkpoint) -> None:
        """Apply --min-confidence to the pairs judged before (not a fingerprinted setting: no request); with a
        spending cap, count what earlier runs of this output paid (the cap covers the whole run)."""
        apply_min_confidence(checkpoint, self.s.min_confidence)
        if self.s.max_cost_usd is not None:
            self.spent_before = spent_before(checkpoint)

    def stop_reason(self, counters: Counters) -> str | None | Coroutine[Any, Any, str | None]:
        """With --max-cost, admit a row only while the spend so far plus the forecast for the rows in flight
        and this one stays within the cap; when it would not, return a coroutine that waits for rows in flight
        to finish (their real cost replaces the forecast) and decides again. Stops only when nothing is in
        flight, so no paid request is cut off. (A refused key, model or quota stops the run in the runner.)
        """
        verdict = self._budget_verdict(counters)
        return self._wait_for_budget(counters) if verdict is _WAIT else verdict

    def _budget_verdict(self, counters: Counters) -> str | None | object:
        cap = self.s.max_cost_usd
        if cap is None:
            return None
        outstanding = self._admitted - counters.finished
        per_row = self.row_cost_forecast()
        spent = self.spent_before + counters.cost_usd
        if spent + (outstanding + 1) * per_row <= cap:
            self._admitted += 1
            return None
        if outstanding > 0:
            return _WAIT
        before = f" (${self.spent_before:.4f} of it by earlier runs of this output)" if self.spent_before else ""
        return (
            f"max cost reached: ${spent:.4f} spent{before} and the next row would cost about ${per_row:.4f}, "
            f"passing --max-cost ${cap:.2f}; the cap covers the whole run across reruns: raise it to continue"
        )

    async def _wait_for_budget(self, counters: Counters) -> str | None:
        while True:
            verdict = self._budget_verdict(counters)  # no await between this check and clear(): no lost wake-up
            if verdict is not _WAIT:
                return verdict  # type: ignore[return-value]
            self._row_done.clear()
            await self._row_done.wait()

    def row_cost_forecast(self) -> float:
        """Mean cost per paid row, smoothed toward the pre-run estimate while few rows are paid.

        Free rows (degenerate skips, rows that failed before any billed answer) are left out: averaging
        over them would shrink the forecast and let many rows in at once (a cap of $0.40 once spent $2.73
        at concurrency 16 behind a run of free rows). Each admitted row reserves a paid row's forecast.
        """
        return (self.prior_row_cost * PRIOR_WEIGHT_ROWS + self._paid_cost) / (PRIOR_WEIGHT_ROWS + self._paid_rows)

    async def process(self, row: Row, ctx: RowContext) -> dict[str, Any]:
        usage = RowUsage()
        try:
            return await self._process(row, ctx, usage)
        except FatalError as e:
            e.cost_usd = usage.cost_usd  # its error record keeps what was paid: the whole-run cap counts it
            raise
        finally:
            self.row_paid(usage.cost_usd)
            self._row_done.set()

    def row_paid(self, cost_usd: float) -> None:
        """A row finished having spent `cost_usd`: the --max-cost forecast learns from the rows that paid."""
        if cost_usd > 0:
            self._paid_rows += 1
            self._paid_cost += cost_usd

    # -- one row ----------------------------------------------------------------------------------
    async def _process(self, row: Row, ctx: RowContext, usage: RowUsage) -> dict[str, Any]:
        cands, dropped, order = self.candidates(row)
        first_in_hand, second_in_hand = self.judgements_in_hand(row, order, usage)
        first = first_in_hand or await self._judge(row, ctx, cands, order, usage)
        second = None
        if self.s.swap_check:
            second = second_in_hand or await self._judge(row, ctx, cands, order[::-1], usage)
        return self.result(row, ctx.counters, cands, dropped, first, second, usage)

    def judgements_in_hand(
        self, row: Row, order: list[int], usage: RowUsage
    ) -> tuple[Judgement | None, Judgement | None]:
        """The hook for a verdict already in hand: (first order, reversed order) judged before this stage ran, each
        None to ask the judge. A stage that returns one adds what it cost to `usage`. The live judge has none;
        --finish-live returns the --swap-check orders its batches answered (stages/judge/batch_live.py)."""
        return None, None

    def candidates(self, row: Row) -> tuple[Candidates, dict[str, list[int]], list[int]]:
        """(the row's distinct candidates, the completions dropped, the order shown first); SkipRow when there is
        nothing to judge. Live and batch mode alike."""
        completions: list[str] = row.data["completions"]
        cands = prepare_candidates(completions)
        dropped = {"empty": list(cands.empty), "duplicate": list(cands.duplicate)}
        if len(cands) < 2:
            raise SkipRow(
                "fewer_than_two_distinct",
                {"detail": cands.describe_drops(len(completions)) + ": nothing to compare", **dropped},
            )
        if backend_of(self.s).needs_reference and not row.data.get("reference"):
            raise SkipRow(
                "no_reference",
                {"detail": f'the {self.s.backend} judge needs the row\'s "reference" (the SFT completion); this row '
                           "has none"},
            )
        return cands, dropped, shown_order(row.id, len(cands))

    async def _judge(
        self, row: Row, ctx: RowContext, cands: Candidates, order: list[int], usage: RowUsage
    ) -> Judgement:
        shown = [cands.texts[p] for p in order]
        ids = [label(i) for i in range(len(shown))]
        rank = backend_of(self.s).rank
        if rank is not None:  # an offline backend ranks by itself, free
            return rank(row, order, shown, ids)
        verdict, model_version = await self._ask(row, ctx, shown, ids, usage)
        return judgement(order, ids, verdict, model_version)

    async def _ask(
        self, row: Row, ctx: RowContext, shown: list[str], ids: list[str], usage: RowUsage
    ) -> tuple[Verdict, str | None]:
        s = self.s
        assert self.client is not None
        client = self.client
        budget = s.max_completion_tokens
        while True:
            body = self.request_body(row.data["prompt"], shown, budget)

            async def call(body: dict[str, Any] = body) -> tuple[dict[str, Any], Any]:
                usage.requests += 1
                data = await post_chat(client, body, on_headers=ctx.pacer.observe)
                self.account(ctx.counters, usage, data)  # billed even when the answer is unusable
                return data, read_answer(data, ids)

            try:
                response, answer = await ctx.request(call, tokens=request_tokens(body) + budget)
            except FatalError as e:
                if self._secret and self._secret in e.reason:  # a proxy echoed the key: keep it out of the files
                    raise FatalError(e.reason.replace(self._secret, "<OPENAI_API_KEY>"), attempts=e.attempts,
                                     status=e.status, run_fatal=e.run_fatal) from None
                raise
            if isinstance(answer, Verdict):
                return answer, response.get("model")
            if budget >= s.max_completion_tokens_cap:
                raise self.cut_at_cap(usage.requests)
            new_budget = min(s.max_completion_tokens_cap, budget * 2)
            log.debug("row %s: answer cut by length at %d tokens; retrying with %d", row.id, budget, new_budget)
            budget = new_budget
            ctx.counters.retries += 1
            _bump(ctx.counters, "length_retries")

    def request_body(self, prompt: str | list[dict[str, str]], shown: list[str], budget: int) -> dict[str, Any]:
        """The chat.completions body for one judgement of `shown` (candidate texts, ids A, B, ... in order):
        what live mode posts and what batch mode writes as a line's `body`."""
        s = self.s
        return {
            "model": s.judge_model,
            "messages": build_messages(prompt, shown),
            "response_format": response_format(len(shown)),
            "reasoning_effort": s.reasoning_effort,
            "max_completion_tokens": budget,
        }

    def cut_at_cap(self, attempts: int) -> FatalError:
        s = self.s
        return FatalError(
            f"the answer was cut by the token budget (finish_reason 'length') even at the cap of "
            f"{s.max_completion_tokens_cap} max_completion_tokens; raise --max-completion-tokens-cap "
            "or lower --reasoning-effort",
            attempts=attempts,
        )

    def account(self, counters: Counters, usage: RowUsage, data: dict[str, Any]) -> None:
        """Price one answered request at this mode's prices (the Batch API's are half) into the row and run."""
        u = usage_of(data)
        cost = self.s.billed_price.cost(u.tokens_in, u.tokens_cached, u.tokens_out)
        usage.answered += 1
        usage.tokens_in += u.tokens_in
        usage.tokens_cached += u.tokens_cached
        usage.tokens_out += u.tokens_out
        usage.tokens_reasoning += u.tokens_reasoning
        usage.cost_usd += cost
        counters.add_usage(u.tokens_in, u.tokens_out, u.tokens_cached, cost)
        if u.tokens_reasoning:
            _bump(counters, "tokens_reasoning", u.tokens_reasoning)

    # -- the output row ---------------------------------------------------------------------------
    def result(
        self,
        row: Row,
        counters: Counters,
        cands: Candidates,
        dropped: dict[str, list[int]],
        first: Judgement,
        second: Judgement | None,
        usage: RowUsage,
    ) -> dict[str, Any]:
        s = self.s
        prompt = row.data["prompt"]
        chosen, rejected = cands.texts[first.best], cands.texts[first.worst]
        assert first.best != first.worst and chosen != rejected  # distinct candidates, k >= 2
        idx = cands.indices
        swap = None
        if second is not None:
            agree = first.best == second.best and first.worst == second.worst
            swap = {
                "order_shown": [idx[p] for p in second.order],
                "ranking": [idx[p] for p in second.ranking],
                "ranking_shown": second.ranking_shown,
                "confidence": second.confidence,
                "reason": second.reason,
                "agree": agree,
            }
            _bump(counters, "swap_checked")
            _bump(counters, "swap_agreed", int(agree))
        scores = None
        if first.scores is not None:
            scores = [None] * len(row.data["completions"])
            for p, score in enumerate(first.scores):
                scores[idx[p]] = round(score, 4)
        judge = {
            "backend": s.backend,
            "model": s.model_label,
            "model_version": first.model_version,
            "reasoning_effort": s.reasoning_effort if backend_of(s).takes_reasoning_effort else None,
            "prompt_version": PROMPT_VERSION,
            "ranking": [idx[p] for p in first.ranking],
            "ranking_shown": first.ranking_shown,
            "order_shown": [idx[p] for p in first.order],
            "confidence": first.confidence,
            "reason": first.reason,
            "chosen_index": idx[first.best],
            "rejected_index": idx[first.worst],
            "chosen_position": first.order.index(first.best),
            "rejected_position": first.order.index(first.worst),
            "candidates": len(cands),
            "dropped": dropped,
            "scores": scores,
            "swap": swap,
            "usage": usage.to_dict(),
        }
        as_turn = isinstance(prompt, list)
        record = {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}] if as_turn else chosen,
            "rejected": [{"role": "assistant", "content": rejected}] if as_turn else rejected,
            "judge": judge,
        }
        if swap is not None and not swap["agree"]:
            _bump(counters, "filtered_swap_disagreement")
            raise SkipRow(
                "swap_disagreement",
                {"detail": f"shown in order {judge['order_shown']} the judge ranked {judge['ranking']}; in reversed "
                           f"order {swap['ranking']}: best and worst differ", **record},
            )
        if not passes(judge, s.min_confidence):
            _bump(counters, "filtered_low_confidence")
            raise SkipRow(LOW_CONFIDENCE, {"detail": low_confidence_detail(judge, s.min_confidence), **record})
        return record


def judge_api_key(settings: JudgeSettings, api_key: str | None) -> str | None:
    """The OpenAI key (given, else OPENAI_API_KEY); ConfigError when api.openai.com would get none."""
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key and settings.judge_url is None:
        raise ConfigError(
            "OPENAI_API_KEY is not set: export it for the OpenAI judge, point --judge-url at another "
            f"OpenAI-compatible server, or use --backend {' or '.join(backend_names(sends_requests=False))} "
            "(offline, free)"
        )
    return key


async def max_cost_prior(completions: Path, settings: JudgeSettings) -> float:
    """With --max-cost: the pre-run forecast per paid row at this mode's prices (0 without a cap)."""
    if settings.max_cost_usd is None:
        return 0.0
    forecast = await asyncio.to_thread(estimate, completions, settings, PRIOR_SAMPLE_ROWS)
    log.info("max cost $%.2f per run; forecast before any answer: $%.4f per paid row (%s prices)",
             settings.max_cost_usd, forecast.cost_per_paid_row_usd, settings.mode)
    return forecast.cost_per_paid_row_usd


async def run_judge_live(
    completions: Path,
    out_dir: Path,
    settings: JudgeSettings,
    options: RunOptions,
    *,
    api_key: str | None = None,
    resume_command: str | None = None,
) -> StageSummary:
    """Judge out_dir/preferences.jsonl from a completions file live, one request per row (resumable); writes
    report.json and report.md. `stages.judge.run_judge` dispatches here or to the Batch API mode."""
    check_input_file(completions, "--completions")
    pending = uncollected_batches(out_dir, JudgeStage.output_name)
    if pending:
        raise ConfigError(
            f"{out_dir} has {len(pending)} batch(es) submitted in batch mode and not collected yet "
            f"({', '.join(c.batch_id or c.name for c in pending)}): judging live now would pay for those rows twice; "
            "rerun with --mode batch to collect them (add --finish-live to judge what they leave live)"
        )
    client = None
    key = None
    if backend_of(settings).sends_requests:
        key = judge_api_key(settings, api_key)
        client = make_client(settings.judge_url, key, timeout_s=settings.timeout_s, concurrency=options.concurrency)
    try:
        if client is not None:
            await check_endpoint(client, url_setting="--judge-url / OPENAI_BASE_URL", key_setting="OPENAI_API_KEY")
        prior = await max_cost_prior(completions, settings)
        stage = JudgeStage(settings, client, prior_row_cost=prior, secret=key if client is not None else None)
        summary = await run_stage(stage, completions, out_dir, options, resume_command=resume_command)
    finally:
        if client is not None:
            await client.close()
    write_report(out_dir)
    return summary
