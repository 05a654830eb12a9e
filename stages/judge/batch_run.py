"""The loop of one `judge --mode batch` run: rounds that write chunk files (within --max-cost, forecast at batch
prices before anything is sent), upload and create them as batches while the queue has room for their tokens
(batch_queue.py), then poll until they end and hand each finished batch to the Collector (batch_collect.py).
Requests that failed, expired, or came back malformed or cut by the token budget go into the next round, within
live mode's limits; with --finish-live they are left for the live stage. A batch refused for the queue's token
limit is no attempt: its chunk waits and is created again.

Every chunk's file id and batch id are recorded in the state (batch_state.py) the moment they exist, so a rerun
polls what was submitted and never submits a chunk twice (a batch id lost to a kill between `create` and the
write is found by its input file id in the batch list).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import openai

from engine.checkpoint import Writer
from engine.errors import ExitNow
from engine.options import RunOptions
from engine.output import Duplicate, rows_in_scope
from engine.progress import _duration
from engine.retry import Backoff, Decision, with_retries
from engine.rows import Reject, Row
from engine.runner import install_signals
from engine.summary import Counters, StageSummary
from stages.judge.batch_collect import Collector
from stages.judge.batch_queue import Queue, refused_for_queue
from stages.judge.batch_state import BatchState, Chunk, row_of
from stages.judge.batch_submit import BatchSubmitter
from stages.judge.cost import BATCH_DISCOUNT
from stages.judge.stage import JudgeStage

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_EVERY_S = 60.0  # a polling line at least this often while nothing changes


class BatchApiError(Exception):
    """A Files or Batches call failed for good (after the retry policy): the run stops, the state is kept."""


class BatchRun(BatchSubmitter):
    """One batch-mode run: scan the input, submit rounds (BatchSubmitter, batch_submit.py), poll, collect."""

    def __init__(
        self,
        stage: JudgeStage,
        client: openai.AsyncOpenAI,
        path: Path,
        out_dir: Path,
        name: str,
        options: RunOptions,
        counters: Counters,
        writer: Writer,
        done: set[str],
        state: BatchState,
    ):
        self.stage, self.s, self.client = stage, stage.s, client
        self.path, self.out_dir, self.name = path, out_dir, name
        self.options, self.counters, self.writer = options, counters, writer
        self.done, self.state = done, state
        self.todo: set[str] = set()  # rows in scope, not done before
        self.records = Collector(
            stage,
            client,
            state,
            writer,
            counters,
            options,
            path,
            out_dir,
            name,
            api=self._api,
            rows=self._input_rows,
            done=done,
        )
        self.backoff = Backoff(options.backoff_base_s, options.backoff_cap_s, options.max_retry_after_s)
        self.queue = Queue(state, self.s.batch_max_enqueued_tokens, self.s.batch_requeue_wait_s)
        self.stop = asyncio.Event()
        self.stopped_reason: str | None = None
        self.capped: str | None = None  # why the latest round left requests unsent (--max-cost)
        self._last_status, self._last_log = "", 0.0
        self.signals = 0
        self.started = time.monotonic()

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> StageSummary:
        installed = install_signals(self._on_signal, self.options.handle_signals)
        try:
            await self._scan_input()
            await self._forget_changed_rows()
            while not self.stop.is_set():
                await self._send_waiting()
                if self.stop.is_set():
                    break
                await self._poll_and_collect()
                if self.stop.is_set():
                    break
                if not self.state.open_chunks():
                    if not await self._submit_round():
                        if self.capped:
                            self._request_stop(self.capped)
                        break
                    continue
                self._progress()
                await self._sleep(self.s.poll_interval_s)
        except BatchApiError as e:
            self._request_stop(f"the Batch API failed: {e}; rerun the same command to resume")
        finally:
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.state.save()
        c = self.counters
        left = self.todo - self.done - self.records.finished
        c.total = c.finished + len(left)
        if c.extra.get("batch_cost_usd"):
            c.extra["batch_saving_usd"] = round(c.extra["batch_cost_usd"] * (1 / BATCH_DISCOUNT - 1), 8)
        return StageSummary(
            stage=self.stage.name,
            output=Path(),
            input=self.path,
            counters=c,
            elapsed_s=0.0,
            interrupted=self.signals > 0,
            stopped_reason=self.stopped_reason,
            unfinished=len(left),
        )

    async def _scan_input(self) -> None:
        c = self.counters
        async for item in rows_in_scope(self.path, self.stage.validate, self.options.limit):
            if isinstance(item, Reject):
                self.writer.reject(item.record())
                log.warning("rejected %s", item.where)
                c.rejected += 1
            elif isinstance(item, Duplicate):
                row, first = item.row, item.first_line
                self.writer.reject(
                    {
                        "file": str(self.path),
                        "line": row.line,
                        "id": row.id,
                        "problem": f"duplicate prompt of line {first}; processed once",
                        "duplicate_of": first,
                    }
                )
                c.duplicates += 1
            elif item.id not in self.done:
                self.todo.add(item.id)
        c.total = len(self.todo)

    async def _forget_changed_rows(self) -> None:
        """Rows done or gone from the input since a chunk was recorded keep nothing in the state (a changed row's
        answer held for its other order is dropped when its chunk is collected: the key no longer matches). A row
        beyond --limit keeps what it has (a verdict held, tries, spend): a later run with a larger limit uses it."""
        kept = {row_of(cid)[0] for cid in self.state.requests} | {row_of(cid)[0] for cid in self.state.held}
        kept |= set(self.state.usage)
        outside = kept - self.todo - self.state.open_rows()
        in_input = {row.id async for row in self._input_rows(outside - self.done)}
        for row_id in outside - in_input:
            self.state.forget_row(row_id)

    async def _rows(self, wanted: set[str]) -> AsyncIterator[Row]:
        """The rows within --limit with these ids, streamed (memory stays O(one row)): what may be submitted."""
        if not wanted:
            return
        async for item in rows_in_scope(self.path, self.stage.validate, self.options.limit):
            if isinstance(item, Row) and item.id in wanted:
                yield item

    async def _input_rows(self, wanted: set[str]) -> AsyncIterator[Row]:
        """The rows of the whole input file with these ids, whatever --limit: a submitted batch's answers are
        collected for every row still in the input (the limit only decides what is newly submitted)."""
        if not wanted:
            return
        async for item in rows_in_scope(self.path, self.stage.validate, None):
            if isinstance(item, Row) and item.id in wanted:
                yield item

    async def _api(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Files/Batches call under the engine's retry policy (engine.retry.with_retries; the SDK's own retries
        are off); a stop while it waits to retry ends it."""
        last: list[Decision] = []

        async def before_attempt(attempt: int) -> None:
            if attempt > 1 and self.stop.is_set():
                raise BatchApiError(f"stopped while retrying: {last[-1].reason}")

        return await with_retries(
            call, max_attempts=self.options.max_attempts, backoff=self.backoff, interrupt=self.stop,
            give_up=lambda decision, attempt: BatchApiError(f"{decision.reason} (attempt {attempt})"),
            before_attempt=before_attempt, on_failure=lambda decision, _giving_up: last.append(decision))

    # -- polling and collecting -------------------------------------------------------------------
    async def _poll_and_collect(self) -> None:
        for chunk in self.state.open_chunks():
            if self.stop.is_set():
                return
            if chunk.batch_id is None:
                continue
            batch = await self._api(lambda chunk=chunk: self.client.batches.retrieve(chunk.batch_id))
            refusal = refused_for_queue(batch)
            if refusal is not None:
                self._requeue(chunk, batch.id, refusal)
                continue
            if chunk.update(batch):
                self.state.save()
            if chunk.terminal:
                await self.records.collect(chunk)

    def _requeue(self, chunk: Chunk, batch_id: str, refusal: str) -> None:
        """The API refused the chunk's batch for the queue's token limit: nothing in it ran, so no attempt counts;
        the chunk waits and is created again (batch_queue.py)."""
        wait = self.queue.refuse(chunk, batch_id)
        self.state.save()
        self.counters.extra["batch_queue_refusals"] = self.counters.extra.get("batch_queue_refusals", 0) + 1
        log.warning(
            "%s: batch %s refused, the Batch API queue is full (%s); %s of this run's tokens are enqueued, %s in this "
            "chunk: created again in %.0f s, no attempt counted (lower batch_max_enqueued_tokens if this repeats "
            "while nothing else uses the queue)",
            chunk.name,
            batch_id,
            refusal[:300],
            f"{self.state.enqueued_tokens():,}",
            f"{chunk.tokens:,}",
            wait,
        )

    # -- progress and signals ---------------------------------------------------------------------
    def _progress(self) -> None:
        """A log line per poll when a batch's status or counts changed, else one every PROGRESS_EVERY_S."""
        if not self.options.progress:
            return
        parts = []
        for chunk in self.state.open_chunks():
            rc = chunk.request_counts or {}
            parts.append(
                f"{chunk.name} {chunk.status} {rc.get('completed', 0)}/{rc.get('total', len(chunk.requests))}"
                + (f" ({rc['failed']} failed)" if rc.get("failed") else "")
            )
        status = "; ".join(parts)
        now = time.monotonic()
        if status == self._last_status and now - self._last_log < PROGRESS_EVERY_S:
            return
        self._last_status, self._last_log = status, now
        c = self.counters
        log.info(
            "judge batch: %s | rows %d ok, %d skipped, %d failed | $%.4f | elapsed %s",
            status,
            c.succeeded,
            c.skipped,
            c.failed,
            c.cost_usd,
            _duration(now - self.started),
        )

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    def _request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stopped_reason = reason
            self.stop.set()

    def _on_signal(self, signame: str) -> None:
        self.signals += 1
        if self.signals == 1:
            self._request_stop(
                f"{signame} received: the batches keep running at OpenAI; rerun the same command "
                "to resume polling and collect them"
            )
        else:
            self.writer.fsync()
            self.state.save()
            raise ExitNow(signame)
