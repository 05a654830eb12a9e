"""How a stage runs: validated once, up front."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ConfigError


@dataclass(frozen=True)
class RunOptions:
    """Engine settings shared by every stage. None of them changes a stage's output, so none is fingerprinted."""

    concurrency: int = field(default=16, metadata={"help": "most requests in flight at once"})
    rps: float | None = field(default=None, metadata={"help": "most requests started per second (None: no cap)"})
    rpm: float | None = field(default=None, metadata={
        "help": "most requests admitted per minute, as the API's limit counts them (None: no cap)"})
    tpm: float | None = field(default=None, metadata={
        "help": "most tokens admitted per minute, counted as the API counts them at admission: prompt tokens plus "
                "the completion budget (None: no cap; only stages that count tokens, the judge, are paced by it)"})
    strict: bool = field(default=False, metadata={"help": "fail on any bad input row before sending a request"})
    fresh: bool = field(default=False, metadata={"help": "move the old output aside and start over"})
    limit: int | None = field(default=None, metadata={"help": "only the first N valid input rows"})
    max_attempts: int = field(default=6, metadata={"help": "tries per request for retryable failures"})
    max_malformed: int = field(default=3, metadata={"help": "tries per request when answers are malformed"})
    backoff_base_s: float = field(default=0.5, metadata={"help": "first backoff delay; doubles per retry"})
    backoff_cap_s: float = field(default=30.0, metadata={"help": "longest backoff delay"})
    max_retry_after_s: float = field(default=120.0, metadata={"help": "longest Retry-After honoured"})
    grace_s: float = field(default=30.0, metadata={"help": "after a stop, how long in-flight rows may finish"})
    fsync_every_s: float = field(default=2.0, metadata={"help": "fsync the output at least this often"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (TTY) or log lines"})
    progress_every_s: float = field(default=10.0, metadata={"help": "log-line period when not on a TTY"})
    handle_signals: bool = field(default=False, metadata={"help": "install SIGINT/SIGTERM handlers"})

    def __post_init__(self) -> None:
        def rule(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        rule(self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}; pass --concurrency 16")
        rule(self.rps is None or self.rps > 0, f"rps must be > 0 or unset, got {self.rps}; omit --rps for no cap")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            rule(value is None or value > 0, f"{name} must be > 0 or unset, got {value}; omit --{name} for no cap")
        rule(self.limit is None or self.limit >= 1, f"limit must be >= 1 or unset, got {self.limit}")
        rule(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")
        rule(self.max_malformed >= 1, f"max_malformed must be >= 1, got {self.max_malformed}")
        rule(self.backoff_base_s >= 0, f"backoff_base_s must be >= 0, got {self.backoff_base_s}")
        rule(
            self.backoff_cap_s >= self.backoff_base_s,
            f"backoff_cap_s ({self.backoff_cap_s}) must be >= backoff_base_s ({self.backoff_base_s})",
        )
        rule(self.grace_s >= 0, f"grace_s must be >= 0, got {self.grace_s}")
        rule(self.fsync_every_s > 0, f"fsync_every_s must be > 0, got {self.fsync_every_s}")
