"""The streaming batch engine: plain asyncio, no ZenML or Modal.

Public surface:
- `RunOptions`: how a stage runs (concurrency, rate, strictness, resume).
- `run_stage(stage, input_path, out_dir, options)`: stream rows through a stage with retries and a
  crash-safe JSONL checkpoint; returns a `StageSummary`.
The stages built on it (generate, judge, split, evaluate) live beside it, in `stages/`.
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
