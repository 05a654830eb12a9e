"""The test server's settings: one validated dataclass, set at start and changed at runtime via /_control."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from testserver.faults import TRANSIENT_KINDS, FailMatching, FailNext, FaultKind, parse_kind

DEFAULT_MODELS: tuple[str, ...] = ("seinfeld", "seinfeld-dpo", "gpt-5")

# The judge responder finds the candidate completions in the prompt with this pattern: a block per
# completion, `<completion id="A">text</completion>`, ids are upper-case letters (A, B, C, ... AA).
# Named groups `id` and `body` are required when you pass your own pattern.
COMPLETION_PATTERN = r'<completion id="(?P<id>[A-Z]+)">(?P<body>.*?)</completion>'

# Start-only settings: changing them needs a new server.
START_ONLY = frozenset({"host", "port"})


def _nonneg(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class ServerOptions:
    """Everything the test server does. Field names are the CLI flags (with dashes) and the /_control keys."""

    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind (start only)"})
    port: int = field(default=0, metadata={"help": "port; 0 picks a free one (start only)"})
    models: list[str] = field(
        default_factory=lambda: list(DEFAULT_MODELS), metadata={"help": "ids /v1/models lists and accepts"}
    )
    reasoning_models: list[str] = field(
        default_factory=lambda: ["gpt-5"],
        metadata={
            "help": "models that behave like GPT-5: reject temperature != 1 and max_tokens (400), "
            "report reasoning tokens"
        },
    )
    latency: float = field(default=0.0, metadata={"help": "seconds before every answer"})
    jitter: float = field(default=0.0, metadata={"help": "extra uniform random seconds in [0, jitter]"})
    model_latency: dict[str, float] = field(
        default_factory=dict, metadata={"help": "{model: seconds} overriding `latency` per model"}
    )
    max_in_flight: int | None = field(
        default=None,
        metadata={"help": "answer 429 (with Retry-After) to requests arriving while this many are in flight"},
    )
    error_latency: float = field(
        default=0.0, metadata={"help": "seconds before an HTTP error status or a dropped connection"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the RNG for fault draws and jitter"})
    fault_rate: float = field(default=0.0, metadata={"help": "probability that a request gets a random fault"})
    fault_kinds: dict[FaultKind, float] = field(
        default_factory=lambda: dict.fromkeys(TRANSIENT_KINDS, 1.0),
        metadata={"help": "kinds the random faults draw from, with weights (a list means equal weights)"},
    )
    fault_models: list[str] | None = field(
        default=None, metadata={"help": "models the random faults apply to (None: all)"}
    )
    fail_next: list[FailNext] = field(
        default_factory=list, metadata={"help": "[{kind, count, model}]: fail the next requests (exact)"}
    )
    fail_matching: list[FailMatching] = field(
        default_factory=list,
        metadata={"help": "[{substring, kind, model}]: fail every request whose prompt contains substring"},
    )
    retry_after: float | None = field(
        default=1.0, metadata={"help": "Retry-After seconds sent with 429 (None: no header)"}
    )
    hang_seconds: float = field(default=30.0, metadata={"help": "how long a 'hang' fault sleeps"})
    cache_share: float = field(
        default=0.5, metadata={"help": "share of prompt tokens reported cached when the prompt is long"}
    )
    cache_min_tokens: int = field(default=1024, metadata={"help": "prompt tokens needed before caching"})
    completion_pattern: str = field(
        default=COMPLETION_PATTERN, metadata={"help": "regex with groups `id` and `body` the judge parses"}
    )
    sample_lines: list[int] = field(
        default_factory=lambda: [2, 4], metadata={"help": "[min, max] script lines per sampled choice (max 10)"}
    )
    mark_choices: bool = field(
        default=False,
        metadata={"help": "sampled choices carry PREFER-ME / AVOID-ME markers (one of each when n >= 2)"},
    )
    model_markers: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "model name -> PREFER-ME or AVOID-ME, put into every choice sampled from that model "
                  "(an A/B judge then always prefers, or rejects, that model's text)"},
    )
    roots: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "model name -> the folder /v1/models lists as its `root`, as vLLM does for a LoRA adapter "
                  "(a stand-in for the Modal serving app: which adapter folders the live version loaded)"},
    )
    judge_position_bias: bool = field(
        default=False, metadata={"help": "the judge ranks completions in the order shown, ignoring their text"}
    )
    log_size: int = field(default=10_000, metadata={"help": "entries kept in the request log ring"})
    batch_slow_polls: int = field(
        default=0, metadata={"help": "a batch stays in_progress for at least this many retrieves (slow progress)"}
    )
    batch_fail_validation: int = field(default=0, metadata={"help": "the next N batches created fail validation"})
    batch_expire_half: int = field(
        default=0, metadata={"help": "the next N batches expire with only the first half of their requests run"}
    )
    batch_concurrency: int = field(default=8, metadata={"help": "lines of one batch answered at once"})
    batch_enqueued_token_limit: int | None = field(
        default=None,
        metadata={
            "help": "input tokens per model the batch queue holds (None: no limit): a batch that would take its "
            "model's batches in progress past it fails validation with code token_limit_exceeded, as OpenAI's does"
        },
    )
    max_model_len: int = field(
        default=8192, metadata={"help": "context length /v1/models reports for every model (vLLM's max_model_len)"}
    )
    # -- replicas: Modal's autoscaler and router in front of vLLM replicas (testserver/replicas.py) -----------------
    replicas_max: int | None = field(
        default=None,
        metadata={"help": "most replicas (Modal's max_containers); None: no replica model, every request is "
                  "answered at once after `latency`"},
    )
    replicas_min: int = field(
        default=0, metadata={"help": "replicas always up (Modal's min_containers); these are warm at start"}
    )
    replica_max_inputs: int = field(
        default=64,
        metadata={"help": "requests one replica runs at once (@modal.concurrent(max_inputs)); more wait in the "
                  "router's queue"},
    )
    replica_target_inputs: int | None = field(
        default=None,
        metadata={"help": "in-flight requests per replica the autoscaler aims for (@modal.concurrent(target_inputs)); "
                  "None: replica_max_inputs, as Modal defaults it"},
    )
    replica_startup_s: float = field(
        default=0.0, metadata={"help": "seconds a new replica takes before it serves (a cold start)"}
    )
    replica_prefill_s: float = field(
        default=0.0, metadata={"help": "fixed seconds of every request's service time on a replica (prefill)"}
    )
    replica_token_latency_s: float = field(
        default=0.0,
        metadata={"help": "seconds per generated token of a request (its longest choice): service time = "
                  "replica_prefill_s + tokens * this; a replica's requests run in parallel (continuous batching)"},
    )
    replica_scaledown_s: float = field(
        default=60.0,
        metadata={"help": "a replica idle this long stops, down to the number wanted (Modal's scaledown_window)"},
    )
    replica_models: list[str] | None = field(
        default=None, metadata={"help": "models served by the replicas (None: all; the others answer at once)"}
    )
    # -- OpenAI's per-model rate limits (testserver/ratelimit.py) -------------------------------------------------
    tpm_limit: int | None = field(
        default=None,
        metadata={"help": "tokens per minute per model (None: no limit); a request counts its prompt tokens plus "
                  "n * max_completion_tokens (or max_tokens) at admission"},
    )
    rpm_limit: int | None = field(default=None, metadata={"help": "requests per minute per model (None: no limit)"})
    rate_limit_models: list[str] | None = field(
        default=None, metadata={"help": "models the tpm/rpm limits apply to (None: all)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535 (0: any free port), got {self.port!r}")
        if isinstance(self.models, str) or not self.models or not all(isinstance(m, str) for m in self.models):
            raise ValueError(f"models must be a non-empty list of model ids, got {self.models!r}")
        self.models = list(self.models)
        if isinstance(self.reasoning_models, str) or not all(isinstance(m, str) for m in self.reasoning_models):
            raise ValueError(f"reasoning_models must be a list of model ids, got {self.reasoning_models!r}")
        self.reasoning_models = list(self.reasoning_models)
        if not isinstance(self.max_model_len, int) or self.max_model_len < 1:
            raise ValueError(f"max_model_len must be an integer >= 1, got {self.max_model_len!r}")
        for name in ("latency", "jitter", "error_latency", "hang_seconds"):
            _nonneg(name, getattr(self, name))
        if not isinstance(self.model_latency, Mapping):
            raise ValueError(f"model_latency must be a {{model: seconds}} object, got {self.model_latency!r}")
        self.model_latency = dict(self.model_latency)
        for model, seconds in self.model_latency.items():
            _nonneg(f"model_latency[{model!r}]", seconds)
        if self.max_in_flight is not None and (
            not isinstance(self.max_in_flight, int) or isinstance(self.max_in_flight, bool) or self.max_in_flight < 1
        ):
            raise ValueError(f"max_in_flight must be an integer >= 1 or null, got {self.max_in_flight!r}")
        lines = self.sample_lines
        if (
            not isinstance(lines, list | tuple)
            or len(lines) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in lines)
            or not 1 <= lines[0] <= lines[1] <= 10
        ):
            raise ValueError(f"sample_lines must be [min, max] with 1 <= min <= max <= 10, got {lines!r}")
        self.sample_lines = list(lines)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        _nonneg("fault_rate", self.fault_rate)
        if self.fault_rate > 1:
            raise ValueError(f"fault_rate is a probability in [0, 1], got {self.fault_rate!r}")
        self.fault_kinds = _parse_kinds(self.fault_kinds)
        if self.fault_models is not None:
            if isinstance(self.fault_models, str) or not all(isinstance(m, str) for m in self.fault_models):
                raise ValueError(f"fault_models must be a list of model ids or null, got {self.fault_models!r}")
            self.fault_models = list(self.fault_models)
        self.fail_next = [_entry(FailNext, e, "fail_next") for e in _as_list(self.fail_next, "fail_next")]
        self.fail_matching = [
            _entry(FailMatching, e, "fail_matching") for e in _as_list(self.fail_matching, "fail_matching")
        ]
        if self.retry_after is not None:
            _nonneg("retry_after", self.retry_after)
        _nonneg("cache_share", self.cache_share)
        if self.cache_share > 1:
            raise ValueError(f"cache_share is a fraction in [0, 1], got {self.cache_share!r}")
        if not isinstance(self.cache_min_tokens, int) or self.cache_min_tokens < 0:
            raise ValueError(f"cache_min_tokens must be an integer >= 0, got {self.cache_min_tokens!r}")
        try:
            groups = re.compile(self.completion_pattern, re.DOTALL).groupindex
        except (re.error, TypeError) as e:
            raise ValueError(f"completion_pattern is not a valid regex: {self.completion_pattern!r}: {e}") from e
        if not {"id", "body"} <= set(groups):
            raise ValueError(
                f"completion_pattern needs named groups (?P<id>...) and (?P<body>...), got {self.completion_pattern!r}"
            )
        if not isinstance(self.mark_choices, bool):
            raise ValueError(f"mark_choices must be true or false, got {self.mark_choices!r}")
        if not isinstance(self.model_markers, dict) or not all(
            isinstance(k, str) and v in ("PREFER-ME", "AVOID-ME") for k, v in self.model_markers.items()
        ):
            raise ValueError(f"model_markers maps model names to 'PREFER-ME' or 'AVOID-ME', got {self.model_markers!r}")
        if not isinstance(self.roots, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in self.roots.items()):
            raise ValueError(f"roots maps model names to folders (text), got {self.roots!r}")
        if not isinstance(self.judge_position_bias, bool):
            raise ValueError(f"judge_position_bias must be true or false, got {self.judge_position_bias!r}")
        for name in ("batch_slow_polls", "batch_fail_validation", "batch_expire_half"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        limit = self.batch_enqueued_token_limit
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"batch_enqueued_token_limit must be an integer >= 1 or null, got {limit!r}")
        if not isinstance(self.batch_concurrency, int) or self.batch_concurrency < 1:
            raise ValueError(f"batch_concurrency must be an integer >= 1, got {self.batch_concurrency!r}")
        if not isinstance(self.log_size, int) or self.log_size < 1:
            raise ValueError(f"log_size must be an integer >= 1, got {self.log_size!r}")
        self._check_replicas()
        for name in ("tpm_limit", "rpm_limit"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name} must be an integer >= 1 or null (no limit), got {value!r}")
        self.replica_models = _model_list("replica_models", self.replica_models)
        self.rate_limit_models = _model_list("rate_limit_models", self.rate_limit_models)

    def _check_replicas(self) -> None:
        top = self.replicas_max
        if top is not None and not _positive_int(top):
            raise ValueError(f"replicas_max must be an integer >= 1 or null (no replica model), got {top!r}")
        low = self.replicas_min
        if not isinstance(low, int) or isinstance(low, bool) or low < 0 or (top is not None and low > top):
            raise ValueError(f"replicas_min must be an integer in 0..replicas_max ({top}), got {low!r}")
        if not _positive_int(self.replica_max_inputs):
            raise ValueError(f"replica_max_inputs must be an integer >= 1, got {self.replica_max_inputs!r}")
        target = self.replica_target_inputs
        if target is not None and (not _positive_int(target) or target > self.replica_max_inputs):
            raise ValueError(
                f"replica_target_inputs must be an integer in 1..replica_max_inputs ({self.replica_max_inputs}) "
                f"or null, got {target!r}"
            )
        for name in ("replica_startup_s", "replica_prefill_s", "replica_token_latency_s", "replica_scaledown_s"):
            _nonneg(name, getattr(self, name))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ServerOptions:
        """Options from a dict (CLI --config, /_control, keyword arguments); unknown keys are rejected."""
        return cls().updated(values, allow_start_only=True)

    def updated(self, values: Mapping[str, Any], *, allow_start_only: bool = False) -> ServerOptions:
        """A copy with `values` applied and validated; unknown keys raise ValueError naming the valid ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; valid options: {sorted(known)}")
        if not allow_start_only:
            fixed = sorted(k for k in values if k in START_ONLY and values[k] != getattr(self, k))
            if fixed:
                raise ValueError(f"option(s) {fixed} are fixed at start; start a new server to change them")
        return dataclasses.replace(self, **dict(values))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_mapping(to_json())` gives back equal options."""
        out = dataclasses.asdict(self)
        out["fault_kinds"] = {k.value: w for k, w in self.fault_kinds.items()}
        out["fail_next"] = [{"kind": e.kind.value, "count": e.count, "model": e.model} for e in self.fail_next]
        out["fail_matching"] = [
            {"substring": e.substring, "kind": e.kind.value, "model": e.model} for e in self.fail_matching
        ]
        return out


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _model_list(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(m, str) for m in value):
        raise ValueError(f"{name} must be a list of model ids or null (all models), got {value!r}")
    return list(value)


def _as_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, Mapping | FailNext | FailMatching):
        return [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list of objects, got {value!r}")
    return list(value)


def _entry(cls: type[FailNext] | type[FailMatching], value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return cls(**dataclasses.asdict(value))
    if not isinstance(value, Mapping):
        raise ValueError(f"each {name} entry must be an object, got {value!r}")
    try:
        return cls(**value)
    except TypeError as e:
        keys = [f.name for f in dataclasses.fields(cls)]
        raise ValueError(f"{name} entry {dict(value)!r} is invalid: keys are {keys}") from e


def _parse_kinds(value: Any) -> dict[FaultKind, float]:
    if isinstance(value, str | FaultKind):
        value = [value]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = [(k, 1.0) for k in value]
    else:
        raise ValueError(f"fault_kinds must be a list of kinds or a {{kind: weight}} object, got {value!r}")
    kinds: dict[FaultKind, float] = {}
    for k, w in items:
        _nonneg(f"fault_kinds weight of {k!r}", w)
        kinds[parse_kind(k)] = float(w)
    if not kinds or sum(kinds.values()) <= 0:
        raise ValueError(f"fault_kinds needs at least one kind with a weight > 0, got {value!r}")
    return kinds
