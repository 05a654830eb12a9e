"""The evaluation stage, in its own package beside the judge: did DPO make the model better?

- `stage`: `run_evaluate`, the judged A/B of two served models on held-out prompts (samples both, pairs them,
  judges every pair in both orders), and its `EvaluateSettings`.
- `tally`: wins, losses and ties from the judge's records, the report and the gate.
- `winrate`: the win rate with its 95% Wilson score interval (the arena's tally uses it too).
- `length`: the length-controlled win rate (a logistic fit on the length difference, read at zero) and its bootstrap
  interval.
"""

from stages.evaluate.stage import EvaluateSettings, run_evaluate

__all__ = ["EvaluateSettings", "run_evaluate"]
