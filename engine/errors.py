"""Exceptions the engine and its stages use to say what happened to a row or a run."""

from __future__ import annotations

from infra.errors import ConfigError  # the one base error (infra/errors.py): a run cannot start, a setting is invalid

__all__ = ["ConfigError", "ExitNow", "FatalError", "Halted", "InputError", "MalformedResponse"]


class ExitNow(KeyboardInterrupt):
    """A second Ctrl-C (or SIGTERM): stop at once. The engine raises it from its signal handler once every finished
    row is on disk; it leaves asyncio.run (which cancels the rows in flight: left for a rerun) as a
    KeyboardInterrupt, and the CLI (pipelines/dpo.py) is the one place that ends the process, with 130."""


class InputError(ConfigError):
    """Input rows are invalid and the run is strict; `problems` holds every `file:line: problem`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{len(problems)} invalid input row(s); --strict stops before any request is sent:\n  "
            f"{shown}{more}\nFix these rows, or drop --strict to send them to the rejects file and go on."
        )


class FatalError(Exception):
    """A row failed for good: it becomes an error record and a rerun retries it."""

    def __init__(self, reason: str, *, attempts: int = 1, status: int | None = None, run_fatal: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.status = status
        self.run_fatal = run_fatal  # the endpoint refused the run (key, model, quota): no other row will pass
        self.cost_usd = 0.0  # what the row's attempts were billed (a stage sets it): its error record keeps it


class Halted(Exception):
    """The endpoint refused the run while this row waited: its next request is not sent; a rerun does the row."""


class MalformedResponse(Exception):
    """The server answered but the answer cannot be used (bad JSON, wrong shape); retried a few times."""


class SkipRow(Exception):
    """The row is finished without a result (e.g. fewer than two distinct completions to judge).

    `record` is written to the skipped file, so the row counts as done and is not retried.
    """

    def __init__(self, reason: str, record: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record = record or {}
