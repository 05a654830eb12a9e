"""Collecting a finished batch (`judge --mode batch`): download its output and error files, read each request's
line as live mode reads an answer (JudgeStage: read_answer, pricing, the record), and finish each row as a result,
a skip or an error record, or plan the retry of a request. Verdicts of one --swap-check order wait in the state
(batch_state.py) for the other, so an answer collected is never paid for again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson

from engine.checkpoint import Writer, atomic_write
from engine.errors import FatalError, MalformedResponse, SkipRow
from engine.options import RunOptions
from engine.retry import RETRYABLE_STATUS
from engine.rows import Row
from engine.summary import Counters
from stages.judge.answer import CUT_BY_LENGTH, Verdict, read_answer
from stages.judge.batch_state import BatchState, Chunk, custom_id, row_of
from stages.judge.cost import RowUsage
from stages.judge.prompt import label
from stages.judge.stage import Judgement, JudgeStage, judgement

log = logging.getLogger(__name__)

Api = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]  # one Files/Batches call under the retry policy
Rows = Callable[[set[str]], AsyncIterator[Row]]  # the input rows with these ids, streamed


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


class Collector:
    """Writes every row's record of a batch run (result, skip or error) and keeps who finished."""

    def __init__(
        self,
        stage: JudgeStage,
        client: openai.AsyncOpenAI,
        state: BatchState,
        writer: Writer,
        counters: Counters,
        options: RunOptions,
        path: Path,
        out_dir: Path,
        name: str,
        *,
        api: Api,
        rows: Rows,
        done: set[str],
    ):
        self.stage, self.s, self.client, self.state, self.writer = stage, stage.s, client, state, writer
        self.counters, self.options = counters, options
        self.path, self.out_dir, self.name = path, out_dir, name
        self.api, self.rows, self.done = api, rows, done
        self.finished: set[str] = set()  # rows with a record this run (result, skip or error)
        self.failed_rows: set[str] = set()  # rows given up this run: not sent again until a rerun

    async def _download(self, chunk: Chunk, file_id: str | None, part: str) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        local = chunk.file(self.out_dir, self.name, part)
        if not local.exists():
            content = await self.api(lambda: self.client.files.content(file_id))
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

    async def collect(self, chunk: Chunk) -> None:
        """Turn a finished batch's lines into records, or into retries; then mark it collected.

        Collecting one batch is all or nothing: the state changes (tries, held verdicts, spend) are made on a
        draft and taken into the state, with the batch marked collected, in one atomic save after an fsync of
        the records. A stop in between (a second Ctrl-C, a kill) leaves the state as it was before: collecting the
        batch again finds the rows whose result or skip was written done (not rewritten) and settles the others
        once (the errors file is the latest run's, so a failed row's record is written again there, once)."""
        answers = {}
        for line in await self._download(chunk, chunk.error_file_id, "errors"):
            answers[line["custom_id"]] = line
        for line in await self._download(chunk, chunk.output_file_id, "output"):
            answers[line["custom_id"]] = line
        by_row: dict[str, list[str]] = {}
        for cid in chunk.requests:
            by_row.setdefault(row_of(cid)[0], []).append(cid)
        state, self.state = self.state, self.state.draft()
        try:
            seen = set()
            # a row failed this run is read too: an order of it answered in a later batch is paid for (counted, held)
            async for row in self.rows(set(by_row) - self.done - (self.finished - self.failed_rows)):
                seen.add(row.id)
                cids = by_row[row.id]
                if any(chunk.requests[cid] != row.key for cid in cids):
                    log.warning("row %s changed since %s was sent: its answer is not used", row.id, chunk.name)
                    self.state.forget_row(row.id)
                    continue
                self._settle(row, chunk, cids, answers)
            for row_id in set(by_row) - seen - self.finished:  # gone from the input, or done before: nothing to keep
                self.state.forget_row(row_id)
            self.writer.fsync()
        finally:
            draft, self.state = self.state, state
        state.adopt(draft)
        chunk.collected = True
        state.save()
        rc = chunk.request_counts or {}
        log.info(
            "%s: %s, %s of %s request(s) answered; collected",
            chunk.name,
            chunk.status,
            rc.get("completed", "?"),
            rc.get("total", len(chunk.requests)),
        )

    def _settle(self, row: Row, chunk: Chunk, cids: list[str], answers: dict[str, dict[str, Any]]) -> None:
        """Read this chunk's answers for one row: hold verdicts, plan retries, or finish the row. A row that failed
        earlier this run (its other order in an earlier batch of the round) only has its answers priced and held."""
        s, c, o = self.s, self.counters, self.options
        cands, dropped, order = self.stage.candidates(row)
        usage = RowUsage(**self.state.usage.get(row.id, {}))
        failed_before = row.id in self.failed_rows
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
            if failed_before and out.verdict is None:
                continue  # given up this run already: a rerun starts its requests afresh
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
                    "input": row.key,
                }
        self.state.usage[row.id] = dataclasses.asdict(usage)
        if failed_before:
            self.state.forget_tries(row.id)  # its verdicts stay held (with its spend) for a rerun
            return
        if failure is not None:
            self.stage.row_paid(usage.cost_usd)
            self.fail(row, failure)
            return
        halves = [custom_id(row.id, False)] + ([custom_id(row.id, True)] if s.swap_check else [])
        held = [self.state.held_verdict(h, row.key) for h in halves]
        if not all(held):
            return  # an order is still to come: its verdict waits in the state
        first = held_judgement(held[0], order)
        second = held_judgement(held[1], order[::-1]) if s.swap_check else None
        self.stage.row_paid(usage.cost_usd)
        try:
            record = self.stage.result(row, c, cands, dropped, first, second, usage)
        except SkipRow as skip:
            skip.record["judge"]["usage"]["mode"] = "batch"
            self.skip(row, skip)
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

    def skip(self, row: Row, skip: SkipRow) -> None:
        self.writer.skip({"id": row.id, "input": row.key, "line": row.line, "reason": skip.reason, **skip.record})
        self.counters.skipped += 1
        self.finished.add(row.id)
        self.state.forget_row(row.id)

    def fail(self, row: Row, e: FatalError) -> None:
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
        self.state.forget_tries(row.id)


def held_judgement(held: dict[str, Any] | None, order: list[int]) -> Judgement:
    """A verdict held in the state, for candidates shown in `order`, as the live stage's Judgement."""
    assert held is not None
    ids = [label(i) for i in range(len(order))]
    return judgement(order, ids, Verdict(held["ranking"], held["confidence"], held["reason"]), held["model"])


def _bump(counters: Counters, key: str, by: float = 1) -> None:
    counters.extra[key] = counters.extra.get(key, 0) + by
