"""Run a stage over an input file: a fixed worker pool, one retry policy, a crash-safe checkpoint.

    producer ──(bounded queue, size = concurrency)──> N workers ──> one Writer (append-only JSONL)

The producer streams the input, rejects bad and duplicate rows, skips ids already done, and stops
scheduling on a stop request (signal, budget). Workers take rows as slots free up; each request a
stage makes goes through `RowContext.request`, which paces, retries and classifies failures.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.checkpoint import Writer
from engine.errors import ExitNow, FatalError, Halted, SkipRow
from engine.limits import Pacer
from engine.options import RunOptions
from engine.output import Duplicate, StageInfo, open_output, rows_in_scope
from engine.progress import Progress
from engine.retry import Backoff, Decision, with_retries
from engine.rows import Reject, Row
from engine.summary import Counters, StageSummary

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stage(StageInfo, Protocol):
    """What a stage provides to the runner: its output's identity (StageInfo, engine/output.py) and the work."""

    async def process(self, row: Row, ctx: RowContext) -> dict[str, Any]:
        """Do one row; return its result record (without "id"), or raise SkipRow / FatalError."""
        ...

    def stop_reason(self, counters: Counters) -> str | None | Awaitable[str | None]:
        """A reason to stop scheduling new rows (e.g. a spending cap), checked before each row.

        May be a coroutine: the producer then waits for it (a budget may wait for rows in flight to show
        their real cost before deciding), unless a stop (signal) comes first.
        """
        ...


@dataclass
class RowContext:
    """Handed to a stage for one row: `request` runs one API call under the shared retry policy."""

    row: Row
    counters: Counters
    pacer: Pacer
    backoff: Backoff
    options: RunOptions
    halt: asyncio.Event  # set by the first run-wide refusal: no request is sent after it

    async def request(self, call: Callable[[], Awaitable[T]], *, tokens: int = 0) -> T:
        """`call()` under the retry policy (engine.retry.with_retries), paced, stopped by a run-wide refusal.
        `tokens`: what the API counts against its per-minute token limit when it admits each attempt."""

        async def before_attempt(attempt: int) -> None:
            await self.pacer.before_request(tokens)
            if self.halt.is_set():
                raise Halted
            self.counters.requests += 1

        def on_failure(decision: Decision, giving_up: bool) -> None:
            if decision.run_fatal:
                self.halt.set()  # at once: rows waiting for a slot or a retry send nothing more
            if giving_up:
                return
            if decision.status == 429 and decision.retry_after_s is not None:
                self.pacer.cool_down.pause(min(decision.retry_after_s, self.options.max_retry_after_s))
            self.counters.retries += 1
            log.debug("row %s: %s; retrying", self.row.id, decision.reason)

        def give_up(decision: Decision, attempt: int) -> FatalError:
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            return FatalError(f"{decision.reason}{tries}", attempts=attempt, status=decision.status,
                              run_fatal=decision.run_fatal)

        return await with_retries(call, max_attempts=self.options.max_attempts, backoff=self.backoff,
                                  interrupt=self.halt, give_up=give_up, max_malformed=self.options.max_malformed,
                                  before_attempt=before_attempt, on_failure=on_failure)


async def run_stage(
    stage: Stage,
    input_path: Path,
    out_dir: Path,
    options: RunOptions,
    *,
    resume_command: str | None = None,
) -> StageSummary:
    """Run `stage` over `input_path`, resuming from `out_dir`; returns the summary (also written as JSON)."""
    async with open_output(stage, input_path, out_dir, options) as run:
        summary = await _Run(stage, input_path, options, run.counters, run.writer, run.done).run()
        return run.finish(summary, resume_command)


def install_signals(on_signal: Callable[[str], None], enabled: bool) -> list[signal.Signals]:
    """SIGINT and SIGTERM call `on_signal(name)` on the running loop (where the loop can take handlers)."""
    if not enabled:
        return []
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            log.debug("cannot handle %s here", sig.name)
    return installed


class _Run:
    def __init__(
        self,
        stage: Stage,
        input_path: Path,
        options: RunOptions,
        counters: Counters,
        writer: Writer,
        done: Container[str],  # rows finished before (unchanged since): not scheduled again
    ):
        self.stage = stage
        self.input_path = input_path
        self.options = options
        self.counters = counters
        self.writer = writer
        self.done = done
        self.queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=options.concurrency)
        self.stop = asyncio.Event()
        self.halt = asyncio.Event()
        self.stopped_reason: str | None = None
        self.producer_error: Exception | None = None
        self.signals = 0
        self.pacer = Pacer(options.rps, rpm=options.rpm, tpm=options.tpm)
        self.backoff = Backoff(options.backoff_base_s, options.backoff_cap_s, options.max_retry_after_s)
        self.progress = Progress(stage.name, counters, options.progress_every_s)

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stopped_reason = reason
            self.stop.set()

    # -- producer ---------------------------------------------------------------------------------
    async def produce(self) -> None:
        c = self.counters
        try:
            async for item in rows_in_scope(self.input_path, self.stage.validate, self.options.limit):
                if self.stop.is_set():
                    break
                if isinstance(item, Reject):
                    self.writer.reject(item.record())
                    log.warning("rejected %s", item.where)
                    c.rejected += 1
                    c.total = max(0, c.total - 1)
                    continue
                if isinstance(item, Duplicate):
                    row, first = item.row, item.first_line
                    self.writer.reject(
                        {"file": str(self.input_path), "line": row.line, "id": row.id,
                         "problem": f"duplicate prompt of line {first}; processed once", "duplicate_of": first}
                    )
                    log.warning("%s:%d: duplicate prompt of line %d; processed once", self.input_path, row.line,
                                first)
                    c.duplicates += 1
                    c.total = max(0, c.total - 1)
                    continue
                if item.id in self.done:
                    continue
                reason = self.stage.stop_reason(c)
                if inspect.isawaitable(reason):
                    reason = await self._unless_stopped(reason)
                    if self.stop.is_set():
                        break
                if reason:
                    self.request_stop(reason)
                    break
                await self.queue.put(item)
        except Exception as e:
            self.producer_error = e  # run() re-raises it; the workers are cancelled, so no end markers
            raise
        # End markers only on a normal end: when cancelled, no worker is left to make room in the queue.
        for _ in range(self.options.concurrency):
            await self.queue.put(None)

    async def rows_left(self) -> int:
        """After a stop: rows in scope (valid, unique, within --limit) neither done before nor finished now.

        Counted exactly by reading the input again, so rejected and duplicate lines before the limit, and
        rows queued or cut off when the stop came, are all counted right (the exit code depends on it).
        """
        not_done = 0
        async for item in rows_in_scope(self.input_path, self.stage.validate, self.options.limit):
            if isinstance(item, Row) and item.id not in self.done:
                not_done += 1
        return not_done - self.counters.finished  # each row finished now is one of those, finished once

    async def _unless_stopped(self, pending: Awaitable[str | None]) -> str | None:
        task = asyncio.ensure_future(pending)
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
        return task.result() if task.done() and not task.cancelled() else None

    # -- workers ----------------------------------------------------------------------------------
    async def work(self) -> None:
        c = self.counters
        while True:
            row = await self.queue.get()
            if row is None:
                return
            if self.stop.is_set() or self.halt.is_set():
                continue  # not started: left for a rerun
            ctx = RowContext(row, c, self.pacer, self.backoff, self.options, self.halt)
            self.progress.in_flight += 1
            try:
                record = await self.stage.process(row, ctx)
                self.writer.result({"id": row.id, "input": row.key, **record})
                c.succeeded += 1
            except SkipRow as s:
                self.writer.skip({"id": row.id, "input": row.key, "line": row.line, "reason": s.reason, **s.record})
                c.skipped += 1
            except FatalError as e:
                self.writer.error(
                    {"id": row.id, "line": row.line, "stage": self.stage.name, "error": e.reason,
                     "attempts": e.attempts, "status": e.status, **({"cost_usd": e.cost_usd} if e.cost_usd else {})}
                )
                log.warning("%s:%d (id %s) failed: %s", self.input_path, row.line, row.id, e.reason)
                c.failed += 1
                if e.run_fatal:
                    self._refused(e.reason)
            except Halted:  # not finished (and not counted): left for a rerun
                pass
            except Exception as e:  # a bug in a stage must not kill the batch: record it, rerun retries it
                log.exception("%s:%d (id %s): unexpected error", self.input_path, row.line, row.id)
                self.writer.error(
                    {"id": row.id, "line": row.line, "stage": self.stage.name,
                     "error": f"unexpected {type(e).__name__}: {e}", "attempts": 1, "status": None}
                )
                c.failed += 1
            finally:
                self.progress.in_flight -= 1

    def _refused(self, reason: str) -> None:
        self.halt.set()
        if not self.stop.is_set():
            log.error("the %s endpoint refused the run: %s", self.stage.name, reason)
        self.request_stop(
            f"the {self.stage.name} endpoint refused the run ({reason}); fix the API key, model name or billing, "
            "then rerun"
        )

    # -- signals ----------------------------------------------------------------------------------
    def _on_signal(self, signame: str) -> None:
        self.signals += 1
        if self.signals == 1:
            self.request_stop(f"{signame} received")
            print(
                f"\n{signame}: no new rows; letting {self.progress.in_flight} in-flight row(s) finish "
                f"(up to {self.options.grace_s:.0f}s). Press Ctrl-C again to exit at once.",
                file=sys.stderr,
                flush=True,
            )
        else:
            self.writer.fsync()  # every finished row is already written and flushed
            print(f"\n{signame} again: exiting now; rerun the same command to resume.", file=sys.stderr, flush=True)
            raise ExitNow(signame)


    # -- run --------------------------------------------------------------------------------------
    async def run(self) -> StageSummary:
        installed = install_signals(self._on_signal, self.options.handle_signals)
        producer = asyncio.create_task(self.produce(), name="producer")
        workers = [asyncio.create_task(self.work(), name=f"worker-{i}") for i in range(self.options.concurrency)]
        helpers = [asyncio.create_task(self.writer.sync_forever(), name="fsync")]
        if self.options.progress:
            helpers.append(asyncio.create_task(self.progress.run(), name="progress"))
        all_workers = asyncio.gather(*workers)
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            waiting = {all_workers, stop_wait, producer}
            while not all_workers.done() and not self.stop.is_set():
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if producer in done:
                    waiting.discard(producer)
                    if self.producer_error is not None:
                        raise self.producer_error  # e.g. the input file became unreadable
            if not all_workers.done():  # a stop was requested: give in-flight rows the grace period
                try:
                    await asyncio.wait_for(asyncio.shield(all_workers), self.options.grace_s)
                except TimeoutError:
                    log.warning("grace period over: cancelling %d in-flight row(s)", self.progress.in_flight)
            if all_workers.done() and not all_workers.cancelled():
                all_workers.result()  # re-raise a worker's unexpected crash
        finally:
            for task in (producer, stop_wait, *workers, *helpers):
                task.cancel()
            await asyncio.gather(producer, stop_wait, *workers, *helpers, return_exceptions=True)
            if all_workers.done() and not all_workers.cancelled():
                all_workers.exception()  # mark it retrieved: after an early exit it holds the workers' cancellation
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)
        if self.options.progress:
            self.progress.finish()
        c = self.counters
        if self.pacer.waited_s > 0:  # time workers spent waiting for the per-minute budgets (summed over them)
            c.extra["budget_wait_s"] = round(c.extra.get("budget_wait_s", 0.0) + self.pacer.waited_s, 1)
        interrupted = self.signals > 0
        unfinished = await self.rows_left() if self.stop.is_set() else 0
        c.total = c.finished + unfinished  # exact now; the live total was an estimate from the line count
        return StageSummary(
            stage=self.stage.name,
            output=Path(),
            input=self.input_path,
            counters=c,
            elapsed_s=0.0,
            interrupted=interrupted,
            stopped_reason=self.stopped_reason,
            unfinished=unfinished,
        )
