"""The judge's backends, one entry each: all that differs between the model over the OpenAI API and the offline
format rubric. Settings, the stage, `estimate` and the report ask the entry (`backend_of(settings)`) instead of
comparing names, so a new backend is one more `Backend` in REGISTRY and nothing else.

A backend that sends requests ranks through the live stage's chat request (stages/judge/stage.py) or the Batch
API; an offline one brings its own `rank`, free and without a client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.errors import ConfigError
from engine.rows import Row
from stages.judge.reference import REFERENCE_MODEL, confidence_from_gap
from stages.judge.rubric import rank_by_rubric


@dataclass(frozen=True)
class Judgement:
    """One pass over a row: positions index the row's candidates (not its raw completions)."""

    order: list[int]  # candidate positions in the order shown (ids A, B, ...)
    ranking: list[int]  # candidate positions, best first
    ranking_shown: list[str]  # the ids as the judge answered
    confidence: int
    reason: str
    model_version: str | None = None
    scores: list[float] | None = None  # an offline backend's score per candidate position (the rubric's total)

    @property
    def best(self) -> int:
        return self.ranking[0]

    @property
    def worst(self) -> int:
        return self.ranking[-1]


# An offline backend's ranking of one row: (the row, the candidate positions in the order shown, their texts in that
# order, their ids A, B, ...) -> the Judgement. Deterministic: a rerun or --swap-check asks it again.
Rank = Callable[[Row, list[int], list[str], list[str]], Judgement]


@dataclass(frozen=True)
class Backend:
    name: str  # the --backend value and every record's judge.backend
    help: str  # one line: what ranks (the `backend` setting's help)
    sends_requests: bool  # needs a client and key, may run in batch mode, costs money; False: `rank` decides, free
    rank: Rank | None = None  # an offline backend's ranking (exactly when it sends no requests)
    needs_reference: bool = False  # a row without its "reference" (the SFT completion) is skipped: no_reference
    model: str | None = None  # the model every record names; None: the judge_model setting
    takes_reasoning_effort: bool = False  # the request carries reasoning_effort, and records and fingerprint name it
    estimate_label: str | None = None  # how `estimate` names the judge; None: the model and its reasoning effort
    report_label: str | None = None  # report.md's "Judge:" line; None: the model, its reasoning effort, the prompt
    report_warning: str | None = None  # a warning at the top of report.md for every run of this backend

    def __post_init__(self) -> None:
        if (self.rank is None) != self.sends_requests:
            raise ValueError(
                f"backend {self.name!r}: give `rank` exactly when it sends no requests "
                f"(sends_requests={self.sends_requests}, rank={self.rank!r})"
            )


class HasBackend(Protocol):
    @property
    def backend(self) -> str: ...


def rank_by_reference_rubric(row: Row, order: list[int], shown: list[str], ids: list[str]) -> Judgement:
    """The reference backend: the format rubric ranks (stages/judge/rubric.py); equal totals are broken by
    similarity to the row's reference completion (stages/judge/reference.py)."""
    best_first, rubrics, sims = rank_by_rubric(row.data["prompt"], row.data["reference"], shown)
    b, w = best_first[0], best_first[-1]
    parts = "; ".join(f"{ids[i]} {rubrics[i].describe()}" for i in best_first)
    tie = rubrics[b].total == rubrics[w].total
    reason = (
        f"[reference judge: rubric] {parts}. "
        + (
            f"Equal rubric totals: {ids[b]} is closer to the reference completion (similarity "
            f"{sims[b]:.2f} vs {sims[w]:.2f})."
            if tie
            else f"{ids[b]} best, {ids[w]} worst (similarity to the reference breaks equal totals only)."
        )
        + " A format rubric, not a model's judgement."
    )
    by_candidate = [0.0] * len(order)  # `order` is a permutation of every candidate position
    for i, p in enumerate(order):
        by_candidate[p] = rubrics[i].total
    gap = rubrics[b].total - rubrics[w].total
    return Judgement(
        order,
        [order[i] for i in best_first],
        [ids[i] for i in best_first],
        confidence_from_gap(gap if not tie else sims[b] - sims[w]),
        reason,
        scores=by_candidate,
    )


OPENAI = Backend(
    name="openai",
    help="a model ranks (--judge-model over the OpenAI API or a compatible server)",
    sends_requests=True,
    takes_reasoning_effort=True,
)
REFERENCE = Backend(
    name="reference",
    help="an offline format rubric, equal totals broken by similarity to the SFT reference completion",
    sends_requests=False,
    rank=rank_by_reference_rubric,
    needs_reference=True,
    model=REFERENCE_MODEL,
    estimate_label="the reference judge (an offline format rubric; no requests, free)",
    report_label="**reference judge** (an offline format rubric, ties broken by similarity to the SFT reference "
    "completion; not a model's judgement)",
    report_warning="These pairs come from the offline reference judge (a format rubric, ties broken by similarity "
    "to the SFT reference), not from a model's judgement of quality.",
)
REGISTRY: dict[str, Backend] = {b.name: b for b in (OPENAI, REFERENCE)}
DEFAULT_BACKEND = OPENAI.name


def backend_named(name: str) -> Backend:
    """The registry's entry for `name`; ConfigError naming the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"backend must be one of {list(REGISTRY)}, got {name!r}") from None


def backend_of(settings: HasBackend) -> Backend:
    """The entry for `settings.backend` (JudgeSettings, or anything with a `backend` name)."""
    return backend_named(settings.backend)


def backend_names(*, sends_requests: bool) -> list[str]:
    """The backends that send requests (or that do not: free, no key), for a message that suggests one."""
    return [b.name for b in REGISTRY.values() if b.sends_requests == sends_requests]
