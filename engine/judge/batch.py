"""`judge --mode batch`: the live judge's requests sent through OpenAI's Batch API, at half the price.

    rows -> request lines (custom_id = row id) -> chunk files (<= 50,000 lines, <= 200 MB) -> upload -> batch
         <- results / skipped / errors <- JudgeStage reads each answer as live mode does <- output files <- poll

Every request body, answer check, price and record comes from `JudgeStage` (engine/judge/stage.py), so a
batch answer becomes exactly the row live mode would write. Rounds: one round submits every row not done
(within --max-cost, forecast at batch prices before anything is sent), then polls until its batches end and
collects them. Requests that failed, expired, or came back malformed or cut by the token budget go into the
next round, within live mode's limits (--max-attempts tries, 3 malformed answers, the token cap); with
--finish-live they are judged live instead, once the batches are collected.

Resume: each chunk's file id and batch id are written to NAME.batches.json the moment they exist
(batch_state.py) and its lines stay in the folder, so rerunning the command polls what was submitted and never
submits a chunk twice (a batch id lost to a kill between `create` and the write is found by its input file id
in the batch list). Answers reach the checkpoint when their batch is collected; downloaded files are kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import openai
import orjson

from engine.checkpoint import Checkpoint, Writer, atomic_write, fingerprint
from engine.client import check_endpoint, make_client
from engine.errors import FatalError, InputError, MalformedResponse, SkipRow
from engine.judge.answer import CUT_BY_LENGTH, Verdict, read_answer
from engine.judge.batch_state import BatchState, Chunk, custom_id, row_of, state_path
from engine.judge.cost import BATCH_DISCOUNT, RowUsage
from engine.judge.prompt import label
from engine.judge.report import write_report
from engine.judge.settings import JudgeSettings
from engine.judge.stage import Judgement, JudgeStage, judge_api_key, judgement, max_cost_prior
from engine.options import RunOptions
from engine.progress import _duration
from engine.retry import RETRYABLE_STATUS, Backoff, classify
from engine.rows import Reject, Row, check_input_file
from engine.runner import Duplicate, prepass, rows_in_scope, unchanged_rows, write_summary
from engine.summary import Counters, StageSummary

log = logging.getLogger(__name__)
T = TypeVar("T")

ENDPOINT = "/v1/chat/completions"
PROGRESS_EVERY_S = 60.0  # a polling line at least this often while nothing changes


async def run_judge_batch(
    completions: Path,
    out_dir: Path,
    settings: JudgeSettings,
    options: RunOptions,
    *,
    api_key: str | None = None,
    resume_command: str | None = None,
) -> StageSummary:
    """Judge out_dir/preferences.jsonl through the Batch API (resumable); then report.json and report.md, and with
    settings.finish_live the rows left judged live in the same folder."""
    check_input_file(completions, "--completions")
    key = judge_api_key(settings, api_key)
    client = make_client(settings.judge_url, key, timeout_s=settings.timeout_s, concurrency=4)
    try:
        await check_endpoint(client, url_setting="--judge-url / OPENAI_BASE_URL", key_setting="OPENAI_API_KEY")
        prior = await max_cost_prior(completions, settings)
        stage = JudgeStage(settings, client, prior_row_cost=prior, secret=key)
        summary = await _start(stage, client, completions, out_dir, options, resume_command)
    finally:
        await client.close()
    write_report(out_dir)
    if settings.finish_live and (summary.failed or summary.unfinished) and not summary.interrupted:
        summary = await _finish_live(summary, completions, out_dir, settings, options, key, resume_command)
    return summary


async def _finish_live(
    batch: StageSummary,
    completions: Path,
    out_dir: Path,
    settings: JudgeSettings,
    options: RunOptions,
    key: str | None,
    resume_command: str | None,
) -> StageSummary:
    """Judge live what the batch round left (failed, expired, malformed, never sent), within what --max-cost left."""
    from engine.judge.stage import run_judge

    cap = settings.max_cost_usd
    if cap is not None and cap - batch.cost_usd <= 0:
        return batch
    live_settings = dataclasses.replace(
        settings, mode="live", finish_live=False, max_cost_usd=None if cap is None else cap - batch.cost_usd
    )
    log.info("--finish-live: judging the %d row(s) the batches left, live", batch.failed + batch.unfinished)
    live = await run_judge(completions, out_dir, live_settings, options, api_key=key, resume_command=resume_command)
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


async def _start(
    stage: JudgeStage,
    client: openai.AsyncOpenAI,
    path: Path,
    out_dir: Path,
    options: RunOptions,
    resume_command: str | None,
) -> StageSummary:
    """As the runner starts a stage (engine/runner.py: run_stage): input checked before --out is touched, the
    lock, the fingerprint (the same as live mode's: either mode resumes the other's results), rows still done."""
    started = time.monotonic()
    pre = await prepass(path, stage.validate, options.strict)
    if pre.problems:
        raise InputError(pre.problems)
    checkpoint = Checkpoint(out_dir, stage.output_name)
    new_dir, new_lock = not out_dir.exists(), not checkpoint.lock_path.exists()
    checkpoint.acquire_lock()
    try:
        try:
            if options.fresh:
                _move_batches_aside(out_dir, checkpoint.name)
            checkpoint.check_fingerprint(fingerprint(stage.name, stage.settings(), pre.sha256), fresh=options.fresh)
            scan = checkpoint.scan()
            state = BatchState.load(state_path(out_dir, checkpoint.name))
        except BaseException:
            checkpoint.undo_start(remove_lock=new_lock, remove_dir=new_dir)
            raise
        done = await unchanged_rows(checkpoint, path, stage.validate, options.limit, scan.done)
        stage.before_run(checkpoint)
        counters = Counters(done_before=len(done))
        writer = checkpoint.open_writer(options.fsync_every_s)
        try:
            summary = await _BatchRun(
                stage, client, path, out_dir, checkpoint.name, options, counters, writer, set(done), state
            ).run()
        finally:
            writer.close()
        summary.elapsed_s = time.monotonic() - started
        summary.output = checkpoint.results
        summary.resume_command = resume_command
        write_summary(checkpoint, summary)
        return summary
    finally:
        checkpoint.release_lock()


def _move_batches_aside(out_dir: Path, name: str) -> None:
    """--fresh: the batch records and files go to previous/ too (batches still running at OpenAI are abandoned)."""
    files = [state_path(out_dir, name), *out_dir.glob(f"{name}.batch-*.jsonl")]
    files = [f for f in files if f.exists()]
    if not files:
        return
    target = out_dir / "previous" / f"{name}-batches-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.rename(target / f.name)
    log.warning("--fresh: moved the previous batch records to %s (batches still running are not cancelled)", target)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """One request's line: a verdict, an answer cut by the token budget, or a retryable failure."""

    verdict: Verdict | None = None
    model: str | None = None
    cut: bool = False
    retry: str | None = None  # why it is to be sent again
    malformed: bool = False
    status: int | None = None


def _unanswered(chunk: Chunk) -> str:
    if chunk.status == "failed":
        return f"the batch failed: {'; '.join(chunk.errors)[:300] or 'no reason given'}"
    if chunk.status == "expired":
        return "the batch expired (24 h window) before this request ran"
    if chunk.status == "cancelled":
        return "the batch was cancelled before this request ran"
    return "the request is in neither the batch's output file nor its error file"


class BatchApiError(Exception):
    """A Files or Batches call failed for good (after the retry policy): the run stops, the state is kept."""


class _BatchRun:
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
        self.finished: set[str] = set()  # rows with a record this run (result, skip or error)
        self.failed_rows: set[str] = set()  # rows given up this run: not sent again until a rerun
        self.backoff = Backoff(options.backoff_base_s, options.backoff_cap_s, options.max_retry_after_s)
        self.stop = asyncio.Event()
        self.stopped_reason: str | None = None
        self.capped: str | None = None  # why the latest round left requests unsent (--max-cost)
        self._last_status, self._last_log = "", 0.0
        self.signals = 0
        self.started = time.monotonic()

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> StageSummary:
        installed = self._install_signals()
        try:
            await self._scan_input()
            self._forget_changed_rows()
            while not self.stop.is_set():
                await self._resubmit_unsent()
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
        left = self.todo - self.done - self.finished
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

    def _forget_changed_rows(self) -> None:
        """Rows done or gone since a chunk was recorded keep nothing in the state (a changed row's answer held
        for its other order is dropped when its chunk is collected: the key no longer matches)."""
        live = {row_of(cid)[0] for cid in self.state.requests} | {row_of(cid)[0] for cid in self.state.held}
        for row_id in live - self.todo:
            if row_id not in self.state.open_requests():
                self.state.forget_row(row_id)

    async def _rows(self, wanted: set[str]) -> AsyncIterator[Row]:
        """The input rows with these ids, streamed (memory stays O(one row))."""
        if not wanted:
            return
        async for item in rows_in_scope(self.path, self.stage.validate, self.options.limit):
            if isinstance(item, Row) and item.id in wanted:
                yield item

    # -- submitting -------------------------------------------------------------------------------
    def _round(self) -> int:
        return max((c.round for c in self.state.chunks), default=0) + 1

    async def _submit_round(self) -> int:
        """Write, upload and create this round's chunks; the number of requests submitted."""
        s = self.s
        pending = self.todo - self.done - self.finished - self.failed_rows
        allowed = self._requests_allowed()
        capped = False
        chunks: list[tuple[list[bytes], dict[str, str]]] = []
        lines: list[bytes] = []
        keys: dict[str, str] = {}
        size = 0
        round_no = self._round()
        async for row in self._rows(pending):
            try:
                cands, _, order = self.stage.candidates(row)
            except SkipRow as skip:
                self._skip(row, skip)
                continue
            for second in (False, True) if s.swap_check else (False,):
                cid = custom_id(row.id, second)
                req = self.state.requests.get(cid)
                if cid in self.state.held or (req is not None and s.finish_live):
                    continue  # answered already, or a retry that --finish-live does live
                if allowed <= 0:
                    capped = True
                    continue
                shown_order = order[::-1] if second else order
                budget = (req or {}).get("budget") or s.max_completion_tokens
                body = self.stage.request_body(row.data["prompt"], [cands.texts[p] for p in shown_order], budget)
                line = orjson.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"
                if len(lines) >= s.batch_max_requests or (lines and size + len(line) > s.batch_max_bytes):
                    chunks.append((lines, keys))
                    lines, keys, size = [], {}, 0
                lines.append(line)
                keys[cid] = row.key
                size += len(line)
                allowed -= 1
        if lines:
            chunks.append((lines, keys))
        self.capped = None
        if capped:  # the batches sent are still polled and collected; the run stops when nothing more fits
            self.capped = (
                f"max cost reached: ${self.counters.cost_usd:.4f} spent this run and the rows left would pass "
                f"--max-cost ${s.max_cost_usd:.2f} at batch prices (forecast ${self.stage.row_cost_forecast():.4f} "
                "per row); rerun to continue (the cap is per run)"
            )
        submitted = 0
        for chunk_lines, chunk_keys in chunks:
            chunk = Chunk(self.state.next_name(), round_no, chunk_keys, sum(map(len, chunk_lines)))
            atomic_write(chunk.file(self.out_dir, self.name, "input"), b"".join(chunk_lines))
            self.state.chunks.append(chunk)
            self.state.save()
            await self._send(chunk)
            submitted += len(chunk_keys)
        if submitted:
            log.info("round %d: submitted %d request(s) in %d batch(es)", round_no, submitted, len(chunks))
        return submitted

    def _requests_allowed(self) -> float:
        """With --max-cost: how many requests fit in what is left of the cap, at the forecast per request."""
        cap = self.s.max_cost_usd
        if cap is None:
            return math.inf
        per_request = self.stage.row_cost_forecast() / (2 if self.s.swap_check else 1)
        if per_request <= 0:
            return math.inf
        return max(0, math.floor((cap - self.counters.cost_usd) / per_request + 1e-9))

    async def _resubmit_unsent(self) -> None:
        """Chunks written but never created as a batch (a kill or an API failure came between): send them now."""
        for chunk in self.state.open_chunks():
            if chunk.batch_id is None:
                await self._send(chunk)

    async def _send(self, chunk: Chunk) -> None:
        if chunk.input_file_id is None:
            data = chunk.file(self.out_dir, self.name, "input").read_bytes()
            uploaded = await self._api(
                lambda: self.client.files.create(file=(f"{self.name}.{chunk.name}.jsonl", data), purpose="batch")
            )
            chunk.input_file_id, chunk.status = uploaded.id, "uploaded"
            self.state.save()
        else:  # uploaded before a kill: was the batch created too?
            async for b in self.client.batches.list(limit=100):
                if b.input_file_id == chunk.input_file_id:
                    chunk.batch_id = b.id
                    chunk.update(b)
                    self.state.save()
                    log.info("%s: found batch %s created before the interruption", chunk.name, b.id)
                    return
        batch = await self._api(
            lambda: self.client.batches.create(
                input_file_id=chunk.input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"chunk": chunk.name, "output": str(self.out_dir / self.name)[-500:]},
            )
        )
        chunk.batch_id = batch.id
        chunk.update(batch)
        self.state.save()
        log.info(
            "%s: batch %s created (%d requests, %.1f MB)", chunk.name, batch.id, len(chunk.requests), chunk.bytes / 1e6
        )

    async def _api(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Files/Batches call under the engine's retry policy (the SDK's own retries are off)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                decision = classify(e)
                if not decision.retryable or attempt >= self.options.max_attempts:
                    raise BatchApiError(f"{decision.reason} (attempt {attempt})") from e
                await self._sleep(self.backoff.delay(attempt, decision.retry_after_s))
                if self.stop.is_set():
                    raise BatchApiError(f"stopped while retrying: {decision.reason}") from e

    # -- polling and collecting -------------------------------------------------------------------
    async def _poll_and_collect(self) -> None:
        for chunk in self.state.open_chunks():
            if self.stop.is_set():
                return
            if chunk.batch_id is None:
                continue
            batch = await self._api(lambda chunk=chunk: self.client.batches.retrieve(chunk.batch_id))
            if chunk.update(batch):
                self.state.save()
            if chunk.terminal:
                await self._collect(chunk)

    async def _download(self, chunk: Chunk, file_id: str | None, part: str) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        local = chunk.file(self.out_dir, self.name, part)
        if not local.exists():
            content = await self._api(lambda: self.client.files.content(file_id))
            atomic_write(local, content.content)
        lines = []
        for n, raw in enumerate(local.read_bytes().splitlines(), 1):
            try:
                line = orjson.loads(raw)
                if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                    lines.append(line)
                    continue
            except orjson.JSONDecodeError:
                pass
            if raw.strip():
                log.warning("%s:%d: not a batch result line; its request counts as unanswered", local, n)
        return lines

    async def _collect(self, chunk: Chunk) -> None:
        """Turn a finished batch's lines into records, or into retries; then mark it collected (after an fsync of
        the records, so a kill in between collects it again and finds those rows done)."""
        answers = {}
        for line in await self._download(chunk, chunk.error_file_id, "errors"):
            answers[line["custom_id"]] = line
        for line in await self._download(chunk, chunk.output_file_id, "output"):
            answers[line["custom_id"]] = line
        by_row: dict[str, list[str]] = {}
        for cid in chunk.requests:
            by_row.setdefault(row_of(cid)[0], []).append(cid)
        seen = set()
        async for row in self._rows(set(by_row) - self.done - self.finished):
            seen.add(row.id)
            cids = by_row[row.id]
            if any(chunk.requests[cid] != row.key for cid in cids):
                log.warning("row %s changed since %s was sent: its answer is not used", row.id, chunk.name)
                self.state.forget_row(row.id)
                continue
            self._settle(row, chunk, cids, answers)
        for row_id in set(by_row) - seen:
            if row_id not in self.todo:  # gone from the input (or done meanwhile): nothing to keep
                self.state.forget_row(row_id)
        self.writer.fsync()
        chunk.collected = True
        self.state.save()
        rc = chunk.request_counts or {}
        log.info(
            "%s: %s, %s of %s request(s) answered; collected",
            chunk.name,
            chunk.status,
            rc.get("completed", "?"),
            rc.get("total", len(chunk.requests)),
        )

    def _settle(self, row: Row, chunk: Chunk, cids: list[str], answers: dict[str, dict[str, Any]]) -> None:
        """Read this chunk's answers for one row: hold verdicts, plan retries, or finish the row."""
        s, c, o = self.s, self.counters, self.options
        cands, dropped, order = self.stage.candidates(row)
        usage = RowUsage(**self.state.usage.get(row.id, {}))
        failure: FatalError | None = None
        for cid in cids:
            shown = order[::-1] if row_of(cid)[1] else order
            req = self.state.requests.setdefault(cid, {"tries": 0, "malformed": 0, "budget": None})
            req["tries"] += 1
            usage.requests += 1
            c.requests += 1
            before = usage.cost_usd
            try:
                out = self._answer(answers.get(cid), [label(i) for i in range(len(shown))], chunk, usage)
            except FatalError as e:
                failure = failure or FatalError(e.reason, attempts=req["tries"], status=e.status)
                continue
            finally:
                _bump(c, "batch_cost_usd", usage.cost_usd - before)
            if out.cut:  # as live: the next attempt gets double the budget, with a fresh count of attempts
                budget = req["budget"] or s.max_completion_tokens
                if budget >= s.max_completion_tokens_cap:
                    failure = failure or self.stage.cut_at_cap(usage.requests)
                    continue
                req.update(budget=min(s.max_completion_tokens_cap, budget * 2), tries=0, malformed=0)
                c.retries += 1
                _bump(c, "length_retries")
            elif out.retry is not None:
                req["malformed"] += int(out.malformed)
                if req["tries"] >= o.max_attempts or req["malformed"] >= o.max_malformed:
                    tries = f" after {req['tries']} attempts" if req["tries"] > 1 else ""
                    failure = failure or FatalError(out.retry + tries, attempts=req["tries"], status=out.status)
                else:
                    c.retries += 1
            else:
                assert out.verdict is not None
                v = out.verdict
                self.state.held[cid] = {
                    "ranking": v.ranking,
                    "confidence": v.confidence,
                    "reason": v.reason,
                    "model": out.model,
                }
        self.state.usage[row.id] = dataclasses.asdict(usage)
        if failure is not None:
            self.stage.row_paid(usage.cost_usd)
            self._fail(row, failure)
            return
        halves = [custom_id(row.id, False)] + ([custom_id(row.id, True)] if s.swap_check else [])
        if not all(h in self.state.held for h in halves):
            return  # an order is still to come: its verdict waits in the state
        first = self._judgement(self.state.held[halves[0]], order)
        second = self._judgement(self.state.held[halves[1]], order[::-1]) if s.swap_check else None
        self.stage.row_paid(usage.cost_usd)
        try:
            record = self.stage.result(row, c, cands, dropped, first, second, usage)
        except SkipRow as skip:
            skip.record["judge"]["usage"]["mode"] = "batch"
            self._skip(row, skip)
            return
        record["judge"]["usage"]["mode"] = "batch"
        self.writer.result({"id": row.id, "input": row.key, **record})
        c.succeeded += 1
        self.finished.add(row.id)
        self.state.forget_row(row.id)

    def _answer(self, line: dict[str, Any] | None, ids: list[str], chunk: Chunk, usage: RowUsage) -> _Outcome:
        """What one request's line says, read as live mode reads an answer (usage priced at batch prices);
        FatalError for a failure live mode would not retry either (e.g. HTTP 400)."""
        if line is None:
            return _Outcome(retry=_unanswered(chunk))
        response = line.get("response")
        if not isinstance(response, dict):
            err = line.get("error") if isinstance(line.get("error"), dict) else {}
            return _Outcome(retry=f"batch request error {err.get('code')}: {str(err.get('message'))[:300]}")
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            inner = body.get("error") if isinstance(body, dict) else None
            message = inner.get("message") if isinstance(inner, dict) else body
            reason = f"HTTP {status}: {str(message)[:300]}"
            if isinstance(status, int) and (status in RETRYABLE_STATUS or status >= 500):
                return _Outcome(retry=reason, status=status)
            raise FatalError(reason, status=status if isinstance(status, int) else None)
        if not isinstance(body, dict):
            return _Outcome(retry=f"malformed response: body is not JSON: {str(body)[:120]!r}", malformed=True)
        self.stage.account(self.counters, usage, body)  # billed even when the answer is unusable
        try:
            answer = read_answer(body, ids)
        except MalformedResponse as e:
            return _Outcome(retry=f"malformed response: {e}", malformed=True)
        if answer is CUT_BY_LENGTH:
            return _Outcome(cut=True)
        assert isinstance(answer, Verdict)
        return _Outcome(verdict=answer, model=body.get("model"))

    @staticmethod
    def _judgement(held: dict[str, Any], order: list[int]) -> Judgement:
        ids = [label(i) for i in range(len(order))]
        return judgement(order, ids, Verdict(held["ranking"], held["confidence"], held["reason"]), held["model"])

    def _skip(self, row: Row, skip: SkipRow) -> None:
        self.writer.skip({"id": row.id, "input": row.key, "line": row.line, "reason": skip.reason, **skip.record})
        self.counters.skipped += 1
        self.finished.add(row.id)
        self.state.forget_row(row.id)

    def _fail(self, row: Row, e: FatalError) -> None:
        self.writer.error(
            {
                "id": row.id,
                "line": row.line,
                "stage": self.stage.name,
                "error": e.reason,
                "attempts": e.attempts,
                "status": e.status,
            }
        )
        log.warning("%s:%d (id %s) failed: %s", self.path, row.line, row.id, e.reason)
        self.counters.failed += 1
        self.finished.add(row.id)
        self.failed_rows.add(row.id)
        self.state.forget_row(row.id)

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

    def _install_signals(self) -> list[int]:
        if not self.options.handle_signals:
            return []
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                log.debug("cannot handle %s here", sig.name)
        return installed

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
            os._exit(130)


def _bump(counters: Counters, key: str, by: float = 1) -> None:
    counters.extra[key] = counters.extra.get(key, 0) + by
