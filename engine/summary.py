"""What a stage run did, printed at the end and written as JSON beside the output."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Counters:
    """Live counts, updated by the runner and the stage; read by the progress display."""

    total: int = 0  # rows this run has to do (valid, unique, not already done, within the limit)
    done_before: int = 0  # rows found finished in the checkpoint
    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    rejected: int = 0  # bad input rows (rejects file)
    duplicates: int = 0  # repeated prompts (rejects file, processed once)
    retries: int = 0
    requests: int = 0
    tokens_in: int = 0
    tokens_cached: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # stage-specific counts

    @property
    def finished(self) -> int:
        return self.succeeded + self.skipped + self.failed

    def add_usage(self, tokens_in: int, tokens_out: int, tokens_cached: int = 0, cost_usd: float = 0.0) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.tokens_cached += tokens_cached
        self.cost_usd += cost_usd


@dataclass
class StageSummary:
    stage: str
    output: Path
    input: Path
    counters: Counters
    elapsed_s: float
    interrupted: bool = False
    stopped_reason: str | None = None  # e.g. "max cost reached", "signal"
    unfinished: int = 0  # rows not reached or cut off by a stop; a rerun does them
    resume_command: str | None = None

    # Flat accessors used by steps and tests.
    @property
    def total(self) -> int:
        return self.counters.total

    @property
    def succeeded(self) -> int:
        return self.counters.succeeded

    @property
    def skipped(self) -> int:
        return self.counters.skipped

    @property
    def failed(self) -> int:
        return self.counters.failed

    @property
    def rejected(self) -> int:
        return self.counters.rejected

    @property
    def retries(self) -> int:
        return self.counters.retries

    @property
    def tokens_in(self) -> int:
        return self.counters.tokens_in

    @property
    def tokens_out(self) -> int:
        return self.counters.tokens_out

    @property
    def cost_usd(self) -> float:
        return self.counters.cost_usd

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.failed or self.unfinished:
            return 1
        return 0

    def to_dict(self) -> dict:
        counters = asdict(self.counters)
        counters["cost_usd"] = round(self.counters.cost_usd, 6)
        return {
            "stage": self.stage,
            "input": str(self.input),
            "output": str(self.output),
            **counters,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.counters.finished / self.elapsed_s, 3) if self.elapsed_s > 0 else None,
            "interrupted": self.interrupted,
            "stopped_reason": self.stopped_reason,
            "unfinished": self.unfinished,
            "exit_code": self.exit_code,
            "resume_command": self.resume_command,
        }

    def render(self) -> str:
        c = self.counters
        lines = [
            f"{self.stage}: {c.succeeded} ok, {c.skipped} skipped, {c.failed} failed, {c.rejected} rejected, "
            f"{c.duplicates} duplicate, {c.done_before} already done; {c.retries} retries, "
            f"{c.requests} requests in {self.elapsed_s:.1f}s",
            f"  tokens in {c.tokens_in:,} (cached {c.tokens_cached:,}), out {c.tokens_out:,}; cost ${c.cost_usd:.4f}",
            f"  output: {self.output}",
        ]
        if self.stopped_reason:
            lines.append(f"  stopped: {self.stopped_reason}; {self.unfinished} row(s) left for a rerun")
        if c.failed:
            lines.append(f"  {c.failed} row(s) failed: see {self.output.with_suffix('.errors.jsonl')}")
        if self.resume_command and (c.failed or self.unfinished or self.interrupted):
            lines.append(f"  resume with: {self.resume_command}")
        return "\n".join(lines)
