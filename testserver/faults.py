"""Fault kinds the test server can inject, and the rules that pick one for a request."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class FaultOptions(Protocol):
    """The fault settings a FaultPicker reads (testserver.options.ServerOptions has them; no import of it here,
    since the options module builds on this one)."""

    fault_rate: float
    fault_kinds: Mapping[Any, float]
    fault_models: Sequence[str] | None
    fail_next: Sequence[Any]
    fail_matching: Sequence[Any]
    seed: int | None


class FaultKind(StrEnum):
    """What a faulty response looks like. HTTP statuses are named by their code."""

    RATE_LIMIT = "429"  # 429 with a Retry-After header (the SDK retries it)
    QUOTA = "quota"  # 429 with code "insufficient_quota" and no Retry-After (retrying is pointless)
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    GATEWAY_TIMEOUT = "504"
    BAD_REQUEST = "400"
    UNAUTHORIZED = "401"
    FORBIDDEN = "403"
    NOT_FOUND = "404"
    UNPROCESSABLE = "422"
    HANG = "hang"  # sleep `hang_seconds` before answering normally (longer than the client timeout)
    DROP = "drop"  # close the connection without a response
    MALFORMED = "malformed"  # 200, content-type application/json, body is not valid JSON
    NO_CHOICES = "no_choices"  # 200, valid JSON without a `choices` key
    FEWER_CHOICES = "fewer_choices"  # 200 with 1 choice when n > 1, no choice at all when n == 1
    EMPTY = "empty"  # 200, every choice's content is "" or whitespace
    REFUSAL = "refusal"  # 200, message.refusal set and content null
    LENGTH_EMPTY = "length_empty"  # 200, content "" with finish_reason "length"
    NON_PERMUTATION = "non_permutation"  # judge only: ranking repeats one id and misses another
    BAD_CONTENT = "bad_content"  # judge only: content is truncated JSON text


STATUS_FAULTS: dict[FaultKind, int] = {
    FaultKind.RATE_LIMIT: 429,
    FaultKind.QUOTA: 429,
    FaultKind.SERVER_ERROR: 500,
    FaultKind.BAD_GATEWAY: 502,
    FaultKind.UNAVAILABLE: 503,
    FaultKind.GATEWAY_TIMEOUT: 504,
    FaultKind.BAD_REQUEST: 400,
    FaultKind.UNAUTHORIZED: 401,
    FaultKind.FORBIDDEN: 403,
    FaultKind.NOT_FOUND: 404,
    FaultKind.UNPROCESSABLE: 422,
}

JUDGE_ONLY: frozenset[FaultKind] = frozenset({FaultKind.NON_PERMUTATION, FaultKind.BAD_CONTENT})

TRANSIENT_KINDS: tuple[FaultKind, ...] = (
    FaultKind.RATE_LIMIT,
    FaultKind.SERVER_ERROR,
    FaultKind.UNAVAILABLE,
)


def parse_kind(value: object) -> FaultKind:
    """`FaultKind` from its value ("429", 429, "drop"); the error lists the accepted values."""
    try:
        return FaultKind(str(value).strip().lower())
    except ValueError as e:
        accepted = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault kind {value!r}; use one of: {accepted}") from e


def applies(kind: FaultKind, is_judge: bool) -> bool:
    """Judge-only kinds (a broken ranking) make no sense for a sampling request."""
    return is_judge or kind not in JUDGE_ONLY


@dataclass
class FailNext:
    """Fail the next `count` requests (for `model`, or any model when None) with `kind`."""

    kind: FaultKind
    count: int = 1
    model: str | None = None

    def __post_init__(self) -> None:
        self.kind = parse_kind(self.kind)
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"fail_next count must be an integer >= 1, got {self.count!r}")


@dataclass
class FailMatching:
    """Fail every request (for `model`, or any) whose prompt text contains `substring` with `kind`."""

    substring: str
    kind: FaultKind
    model: str | None = None

    def __post_init__(self) -> None:
        self.kind = parse_kind(self.kind)
        if not isinstance(self.substring, str) or not self.substring:
            raise ValueError(f"fail_matching substring must be a non-empty string, got {self.substring!r}")


class FaultPicker:
    """Chooses the fault for one request: matching rules first, then the fail-next queue, then the rate.

    The rate draws from a `random.Random(seed)`, so a run with the same request order is reproducible.
    """

    def __init__(self, options: FaultOptions):
        self.configure(options, None)

    def configure(self, options: FaultOptions, changed: frozenset[str] | None) -> None:
        """Take the fault settings from `options`; only those named in `changed` (None: all)."""
        if changed is None or {"fault_rate", "fault_kinds", "fault_models"} & changed:
            self.rate = options.fault_rate
            self._kinds = list(options.fault_kinds)
            self._weights = list(options.fault_kinds.values())
            self.models = None if options.fault_models is None else frozenset(options.fault_models)
        if changed is None or "fail_next" in changed:
            self.queue = [FailNext(e.kind, e.count, e.model) for e in options.fail_next]
        if changed is None or "fail_matching" in changed:
            self.matching = list(options.fail_matching)
        if changed is None or "seed" in changed:
            self.rng = random.Random(options.seed)

    def pick(self, model: str, is_judge: bool, prompt_text: str) -> FaultKind | None:
        for rule in self.matching:
            if (
                (rule.model is None or rule.model == model)
                and applies(rule.kind, is_judge)
                and rule.substring in prompt_text
            ):
                return rule.kind
        for i, entry in enumerate(self.queue):
            if (entry.model is None or entry.model == model) and applies(entry.kind, is_judge):
                entry.count -= 1
                if entry.count == 0:
                    del self.queue[i]
                return entry.kind
        if self.rate > 0.0 and (self.models is None or model in self.models):
            if self.rng.random() < self.rate:
                kind = self.rng.choices(self._kinds, self._weights)[0]
                if applies(kind, is_judge):
                    return kind
        return None
