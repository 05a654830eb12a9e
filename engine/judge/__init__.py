"""The judge stage, in its own package beside the engine's generic parts (runner, checkpoint, retry, limits,
rows): each row's completions are ranked and the best and worst kept as a preference pair.

- `settings`: `JudgeSettings`, one validated dataclass for `judge` and `estimate`.
- `prompt`, `answer`: the request the judge model gets and how its answer is read.
- `stage`: the live judge (`JudgeStage`, `run_judge`) over the engine's runner.
- `cost`, `estimate`: prices, usage per row and the pre-run estimate.
- `reference`: the offline similarity judge; `rows`: the input row check; `report`: report.md.
"""

from engine.judge.estimate import Estimate, estimate
from engine.judge.settings import JudgeSettings
from engine.judge.stage import JudgeStage, run_judge

__all__ = ["Estimate", "JudgeSettings", "JudgeStage", "estimate", "run_judge"]
