"""The judge stage, in its own package beside the engine's generic parts (runner, checkpoint, retry, limits,
rows): each row's completions are ranked and the best and worst kept as a preference pair.

- `settings`: `JudgeSettings`, one validated dataclass for `judge` and `estimate`.
- `backends`: the registry of judge backends (openai, reference): all that differs between them, in one place.
- `prompt`, `answer`: the request the judge model gets and how its answer is read.
- `run`: `run_judge`, the entry point: live or the Batch API.
- `stage`: the live judge (`JudgeStage`, `run_judge_live`) over the engine's runner; `batch*`: the Batch API mode.
- `cost`, `estimate`: prices, usage per row and the pre-run estimate.
- `rubric`: the offline judge; `reference`: its tie-break (similarity); `rows`: the row check; `report`: report.md.
"""

from stages.judge.estimate import Estimate, estimate
from stages.judge.run import run_judge
from stages.judge.settings import JudgeSettings
from stages.judge.stage import JudgeStage

__all__ = ["Estimate", "JudgeSettings", "JudgeStage", "estimate", "run_judge"]
