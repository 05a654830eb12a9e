"""The submitting half of a `judge --mode batch` run (mixed into BatchRun, stages/judge/batch_run.py): each round
writes this round's chunk files within --max-cost (forecast at batch prices before anything is sent), uploads
them and creates batches while the queue has room for their tokens (batch_queue.py). Every file id and batch id
is recorded in the state the moment it exists, so a rerun never submits a chunk twice: a batch id lost to a kill
between `create` and the write is found by its input file id in the batch list (`_created_batch`).

The methods read the run's state from `self` (BatchRun's attributes: the stage, client, state, queue, counters)
and call its `_api` (one Files/Batches call under the engine's retry policy).
"""

from __future__ import annotations

import logging
import math

import orjson
from openai.types import Batch

from engine.checkpoint import atomic_write
from engine.errors import FatalError, SkipRow
from engine.rows import Row
from stages.judge.batch_chunks import Packer
from stages.judge.batch_state import Chunk, custom_id
from stages.judge.estimate import request_tokens

log = logging.getLogger("stages.judge.batch_run")  # one logger for the run's lines, as before the split
ENDPOINT = "/v1/chat/completions"


class BatchSubmitter:
    """Round submission for BatchRun: `_submit_round`, and the chunk sending under it."""

    # -- submitting -------------------------------------------------------------------------------
    def _round(self) -> int:
        return max((c.round for c in self.state.chunks), default=0) + 1

    async def _submit_round(self) -> int:
        """Write this round's chunks and create those the queue has room for; the number of requests in them."""
        s = self.s
        pending = self.todo - self.done - self.records.finished - self.records.failed_rows
        allowed = self._requests_allowed()
        capped = False
        packer = Packer(s.batch_max_requests, s.batch_max_bytes, s.batch_max_enqueued_tokens, s.batch_chunk_tokens)
        round_no = self._round()
        async for row in self._rows(pending):
            self.state.forget_if_changed(row.id, row.key)
            try:
                cands, _, order = self.stage.candidates(row)
            except SkipRow as skip:
                self.records.skip(row, skip)
                continue
            row_lines: list[tuple[str, bytes, int]] = []
            for second in (False, True) if s.swap_check else (False,):
                cid = custom_id(row.id, second)
                req = self.state.requests.get(cid)
                if self.state.held_verdict(cid, row.key) or (req is not None and s.finish_live):
                    continue  # answered already, or a retry that --finish-live does live
                if allowed <= len(row_lines):
                    capped = True
                    continue
                shown_order = order[::-1] if second else order
                budget = (req or {}).get("budget") or s.max_completion_tokens
                body = self.stage.request_body(row.data["prompt"], [cands.texts[p] for p in shown_order], budget)
                line = orjson.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"
                row_lines.append((cid, line, request_tokens(body)))
            if self._refuse_oversized(row, row_lines):
                continue
            for cid, line, tokens in row_lines:
                packer.add(cid, row.key, line, tokens)
                allowed -= 1
        self.capped = None
        if capped:  # the batches sent are still polled and collected; the run stops when nothing more fits
            self.capped = (
                f"max cost reached: ${self.counters.cost_usd:.4f} spent this run and the rows left would pass "
                f"--max-cost ${s.max_cost_usd:.2f} at batch prices (forecast ${self.stage.row_cost_forecast():.4f} "
                "per row); rerun to continue (the cap is per run)"
            )
        submitted = 0
        for packed in packer.chunks:
            chunk = Chunk(self.state.next_name(), round_no, packed.keys, packed.size, packed.tokens)
            atomic_write(chunk.file(self.out_dir, self.name, "input"), b"".join(packed.lines))
            self.state.chunks.append(chunk)
            submitted += len(packed.keys)
        self.state.save()
        if submitted:
            log.info(
                "round %d: %d request(s) in %d chunk(s), %s input tokens; created as batches while at most %s "
                "tokens are enqueued",
                round_no,
                submitted,
                len(packer.chunks),
                f"{sum(p.tokens for p in packer.chunks):,}",
                f"{s.batch_max_enqueued_tokens:,}",
            )
        await self._send_waiting()
        return submitted

    def _refuse_oversized(self, row: Row, row_lines: list[tuple[str, bytes, int]]) -> bool:
        """A request line over the per-file size limit fits in no file, and one over the enqueued-token cap in no
        queue: its row fails (an error record a rerun retries) before anything is uploaded, instead of a batch the
        API would refuse or one that would wait forever."""
        limit = self.s.batch_max_bytes
        size = max((len(line) for _, line, _ in row_lines), default=0)
        tokens = max((n for _, _, n in row_lines), default=0)
        if size > limit:
            reason = (
                f"its batch request is {size:,} bytes, over the Batch API's limit of {limit:,} bytes per input file, "
                "so no batch can carry it: judge it live (--mode live, or --finish-live), or shorten its prompt or "
                "completions"
            )
        elif (too_large := self.queue.too_large(tokens)) is not None:
            reason = too_large
        else:
            return False
        self.records.fail(row, FatalError(reason, attempts=0))
        return True

    def _requests_allowed(self) -> float:
        """With --max-cost: how many requests fit in what is left of the cap, at the forecast per request."""
        cap = self.s.max_cost_usd
        if cap is None:
            return math.inf
        per_request = self.stage.row_cost_forecast() / (2 if self.s.swap_check else 1)
        if per_request <= 0:
            return math.inf
        return max(0, math.floor((cap - self.counters.cost_usd) / per_request + 1e-9))

    async def _send_waiting(self) -> None:
        """Chunks written but not created as a batch yet, in order, while the queue has room (Queue.next_to_send):
        new ones, ones kept back for the enqueued-token cap or refused for the queue's limit, and ones a kill or an
        API failure caught between writing and creating."""
        while not self.stop.is_set() and (chunk := self.queue.next_to_send()) is not None:
            await self._send(chunk)

    async def _send(self, chunk: Chunk) -> None:
        found = None
        if chunk.input_file_id is None:
            data = chunk.file(self.out_dir, self.name, "input").read_bytes()
            uploaded = await self._api(
                lambda: self.client.files.create(file=(f"{self.name}.{chunk.name}.jsonl", data), purpose="batch")
            )
            chunk.input_file_id, chunk.status = uploaded.id, "uploaded"
            self.state.save()
        else:  # uploaded before a kill: was the batch created too?
            found = await self._api(lambda: self._created_batch(chunk))
        tried = False

        async def create() -> Batch:
            nonlocal tried
            if tried:  # the last try may have made the batch though its answer was lost: never make a second
                earlier = await self._created_batch(chunk)
                if earlier is not None:
                    return earlier
            tried = True
            return await self.client.batches.create(
                input_file_id=chunk.input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"chunk": chunk.name, "output": str(self.out_dir / self.name)[-500:]},
            )

        batch = found or await self._api(create)
        chunk.batch_id = batch.id
        chunk.update(batch)
        self.state.save()
        if found is not None:
            log.info("%s: found batch %s created before the interruption", chunk.name, batch.id)
        else:
            log.info(
                "%s: batch %s created (%d requests, %.1f MB)",
                chunk.name,
                batch.id,
                len(chunk.requests),
                chunk.bytes / 1e6,
            )

    async def _created_batch(self, chunk: Chunk) -> Batch | None:
        """The batch already made over this chunk's uploaded file, if any (found by its input file id)."""
        async for b in self.client.batches.list(limit=100):
            if b.input_file_id == chunk.input_file_id and b.id not in chunk.refused:
                return b
        return None

