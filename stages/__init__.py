"""The pipeline's stages, each built on the generic engine (engine/: runner, checkpoint, rows, client, retry, limits,
progress) and none on ZenML or Modal:

- `stages.generate`: sample n completions per prompt from the served model (`run_generate`, `GenerateSettings`);
- `stages.judge`: rank them into preference pairs, live or through the Batch API (`run_judge`, `JudgeSettings`);
- `stages.split`: train/val by a hash of the prompt (`split_preferences`);
- `stages.evaluate`: the A/B win rate of one served model over another (`run_evaluate`, `EvaluateSettings`).
"""
