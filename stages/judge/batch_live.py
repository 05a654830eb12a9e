"""--finish-live: what the batches left (failed, expired, malformed, never sent) judged live in the same folder,
right after they are collected, within what --max-cost left; the summary covers both.

The live stage is the judge's own (run_stage over JudgeStage), but an order of a --swap-check row whose verdict a
batch already returned (held in NAME.batches.json with the row's input key) is not asked again: only the missing
order is sent, and the row's batch spend is carried into its record.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from engine.checkpoint import Checkpoint
from engine.client import check_endpoint, make_client
from engine.errors import SkipRow
from engine.options import RunOptions
from engine.output import write_summary
from engine.rows import Row
from engine.runner import run_stage
from engine.summary import Counters, StageSummary
from stages.judge.batch_collect import held_judgement
from stages.judge.batch_state import BatchState, custom_id, state_path
from stages.judge.cost import RowUsage
from stages.judge.prompt import Candidates
from stages.judge.report import write_report
from stages.judge.settings import JudgeSettings
from stages.judge.stage import Judgement, JudgeStage, max_cost_prior

log = logging.getLogger(__name__)


class _ReusingStage(JudgeStage):
    """The live judge stage, reusing the verdicts the batches returned for one order of a --swap-check row (through
    JudgeStage's `judgements_in_hand` hook); the record's usage keeps the batch part apart, as batch."""

    def __init__(self, *args: Any, state: BatchState, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.state = state

    def _held(self, row: Row) -> list[dict[str, Any] | None]:
        if not self.s.swap_check:
            return [None, None]
        return [self.state.held_verdict(custom_id(row.id, second), row.key) for second in (False, True)]

    def judgements_in_hand(
        self, row: Row, order: list[int], usage: RowUsage
    ) -> tuple[Judgement | None, Judgement | None]:
        first, second = self._held(row)
        if first is None and second is None:
            return None, None
        for name, value in self.state.usage.get(row.id, {}).items():  # what the batches spent on the row
            setattr(usage, name, getattr(usage, name) + value)
        return (
            held_judgement(first, order) if first else None,
            held_judgement(second, order[::-1]) if second else None,
        )

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
        """The live record; a row that reused a batch verdict gets `usage.batch`: the part billed at batch prices
        (already within the row's totals), so report.md counts that order's batch spend and saving."""
        if not any(self._held(row)):
            return super().result(row, counters, cands, dropped, first, second, usage)
        part = {**RowUsage(**self.state.usage.get(row.id, {})).to_dict(), "mode": "batch"}
        try:
            record = super().result(row, counters, cands, dropped, first, second, usage)
        except SkipRow as skip:
            skip.record["judge"]["usage"]["batch"] = part
            raise
        record["judge"]["usage"]["batch"] = part
        return record


async def finish_live(
    batch: StageSummary,
    completions: Path,
    out_dir: Path,
    settings: JudgeSettings,
    options: RunOptions,
    key: str | None,
    resume_command: str | None,
) -> StageSummary:
    """Judge live what the batch round left (failed, expired, malformed, never sent), within what --max-cost left."""
    cap = settings.max_cost_usd
    if cap is not None and cap - batch.cost_usd <= 0:
        return batch
    state = BatchState.load(state_path(out_dir, JudgeStage.output_name))
    if state.open_chunks():  # the batch run stopped before collecting them: live would pay for those rows twice
        log.warning(
            "--finish-live: not judging live, %d batch(es) are not collected yet; rerun the same command",
            len(state.open_chunks()),
        )
        return batch
    live_settings = dataclasses.replace(
        settings, mode="live", finish_live=False, max_cost_usd=None if cap is None else cap - batch.cost_usd
    )
    log.info("--finish-live: judging the %d row(s) the batches left, live", batch.failed + batch.unfinished)
    client = make_client(settings.judge_url, key, timeout_s=settings.timeout_s, concurrency=options.concurrency)
    try:
        await check_endpoint(client, url_setting="--judge-url / OPENAI_BASE_URL", key_setting="OPENAI_API_KEY")
        prior = await max_cost_prior(completions, live_settings)
        stage = _ReusingStage(live_settings, client, prior_row_cost=prior, secret=key, state=state)
        live = await run_stage(stage, completions, out_dir, options, resume_command=resume_command)
    finally:
        await client.close()
    b, c = batch.counters, live.counters
    c.done_before = b.done_before
    c.total = b.succeeded + b.skipped + c.total
    for name in ("succeeded", "skipped", "retries", "requests", "rejected", "duplicates"):
        setattr(c, name, getattr(c, name) + getattr(b, name) * (name not in ("rejected", "duplicates")))
    c.add_usage(b.tokens_in, b.tokens_out, b.tokens_cached, b.cost_usd)
    for k, v in b.extra.items():
        c.extra[k] = c.extra.get(k, 0) + v
    live.elapsed_s += batch.elapsed_s
    write_summary(Checkpoint(out_dir, "preferences"), live)
    write_report(out_dir)
    return live
