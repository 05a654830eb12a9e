"""The OpenAI account's limits per usage tier, for the judge model: what live judging is paced to and how many
input tokens batch mode keeps enqueued.

The figures are gpt-5's as OpenAI's model page lists them per usage tier (read December 2026). They are
assumptions about your account, not measurements: your limits page (platform.openai.com/settings/organization/
limits) is the truth. Live judging corrects itself at run time from the `x-ratelimit-*` headers of each response
(engine/limits.py), and a batch refused for the queue's limit waits and is created again (batch_queue.py).
Set `judge.tier` in the config; `judge.rpm`, `judge.tpm` and `judge.batch_max_enqueued_tokens` override it.
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUE_MARGIN = 0.9  # batch mode keeps 10% under the queue limit: other jobs of the organisation share it


@dataclass(frozen=True)
class Tier:
    rpm: int  # requests per minute
    tpm: int  # tokens per minute, counted at admission: prompt tokens plus max_completion_tokens
    batch_queue_tokens: int  # input tokens the Batch API holds in batches not finished, per model

    @property
    def batch_max_enqueued_tokens(self) -> int:
        return int(self.batch_queue_tokens * QUEUE_MARGIN)


TIERS: dict[int, Tier] = {
    1: Tier(rpm=500, tpm=500_000, batch_queue_tokens=1_500_000),
    2: Tier(rpm=5_000, tpm=1_000_000, batch_queue_tokens=3_000_000),
    3: Tier(rpm=5_000, tpm=2_000_000, batch_queue_tokens=100_000_000),
    4: Tier(rpm=10_000, tpm=4_000_000, batch_queue_tokens=200_000_000),
    5: Tier(rpm=15_000, tpm=40_000_000, batch_queue_tokens=15_000_000_000),
}


def tier_problem(value: object) -> str | None:
    """Why `value` is no tier; None when it is one."""
    if isinstance(value, int) and not isinstance(value, bool) and value in TIERS:
        return None
    return (f"judge.tier must be one of {', '.join(map(str, TIERS))} (your OpenAI usage tier, on your limits page) "
            f"or null (no pacing), got {value!r}")
