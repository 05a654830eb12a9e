"""The streaming batch engine: plain asyncio, no ZenML or Modal.

Public surface:
- `RunOptions`: how a stage runs (concurrency, rate, strictness, resume).
- `run_stage(stage, input_path, out_dir, options)`: stream rows through a stage with retries and a
  crash-safe JSONL checkpoint; returns a `StageSummary`.
- `engine.generate.run_generate`, `engine.split.split_preferences`: stages; the judge stage is its own
  package, `engine.judge` (`run_judge`, `JudgeSettings`, `estimate`).
"""

from engine.errors import ConfigError, FatalError, InputError, MalformedResponse, SkipRow
from engine.options import RunOptions
from engine.summary import StageSummary

__all__ = [
    "ConfigError",
    "FatalError",
    "InputError",
    "MalformedResponse",
    "RunOptions",
    "SkipRow",
    "StageSummary",
]
