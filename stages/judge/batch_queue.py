"""The Batch API queue's enqueued-token limit (`judge --mode batch`).

An organisation's queue holds at most so many input tokens per model in batches not finished. A batch over it is
accepted, then fails validation with error code `token_limit_exceeded`, and nothing in it ran (NOTES: OpenAI Batch
API limits; openai-python issue 2084). So the written chunks are created in order while this folder's enqueued
tokens stay within `batch_max_enqueued_tokens` (later chunks wait for earlier ones to finish), and a batch refused
all the same (other jobs share the queue, or the cap is above the organisation's limit) counts no attempt: its
chunk waits, with a backoff, and is created again over the same uploaded file.
"""

from __future__ import annotations

import math
import time

from openai.types import Batch

from engine.retry import Backoff
from stages.judge.batch_state import BatchState, Chunk

TOKEN_LIMIT_CODE = "token_limit_exceeded"
REQUEUE_DOUBLINGS = 5  # the wait after a refusal doubles up to 2**5 = 32 times the first


def refused_for_queue(batch: Batch) -> str | None:
    """The API's message when the batch failed validation because the queue was full; None otherwise."""
    if batch.status != "failed" or batch.errors is None:
        return None
    for error in batch.errors.data or []:
        if error.code == TOKEN_LIMIT_CODE:
            return error.message or TOKEN_LIMIT_CODE
    return None


class Queue:
    """Which written chunk may be created now, and how long a refused one waits."""

    def __init__(self, state: BatchState, max_tokens: int, wait_s: float):
        self.state, self.max_tokens = state, max_tokens
        self.backoff = Backoff(wait_s, wait_s * 2**REQUEUE_DOUBLINGS, math.inf)

    def next_to_send(self) -> Chunk | None:
        """The first chunk not created as a batch, if its tokens fit beside the batches enqueued and its wait after
        a refusal is over; None when there is none, or it must wait (the chunks after it wait too: first come,
        first served, so a large chunk is not passed over forever)."""
        for chunk in self.state.open_chunks():
            if chunk.batch_id is not None:
                continue
            if (chunk.not_before or 0.0) > time.time():
                return None
            return chunk if self.state.enqueued_tokens() + chunk.tokens <= self.max_tokens else None
        return None

    def refuse(self, chunk: Chunk, batch_id: str) -> float:
        """The batch over `chunk` was refused for the queue's limit: the chunk waits to be created again, counting
        no attempt for its requests. The seconds it waits."""
        chunk.refused.append(batch_id)
        wait = self.backoff.delay(len(chunk.refused), None)
        chunk.batch_id, chunk.status, chunk.not_before = None, "waiting", time.time() + wait
        return wait

    def too_large(self, tokens: int) -> str | None:
        """Why a request of `tokens` input tokens can never be enqueued (the error of its row); None if it can."""
        if tokens <= self.max_tokens:
            return None
        return (
            f"its batch request is {tokens:,} input tokens (counted as `estimate` counts them), over "
            f"batch_max_enqueued_tokens {self.max_tokens:,}, the most this run lets the Batch API queue hold at once, "
            "so no batch could carry it: raise batch_max_enqueued_tokens (the judge settings) if your organisation's "
            "Batch queue limit for the judge model is higher, judge it live (--mode live, or --finish-live), or "
            "shorten its prompt or completions"
        )
