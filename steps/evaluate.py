"""Steps: did DPO make the model better? The judged A/B win rate of "seinfeld-dpo" over "seinfeld", and the gate.

`evaluate_adapters` runs after the deploy step against what the target serves (targets/: its deployment record
and key), on the split's val set (prompts DPO never trained on) unless `prompts_file` names another. It records
the `ab_eval` artifact: the numbers as metadata (the raw and the length-controlled win rates, the judge's
reliability ledger), the report, a win-rate chart and the DPO training curves as
dashboard visualizations, and the verdict as data: `complete`, and `passed` (the gate's verdict; True with no
gate). A prompt a model answers only blank is a forfeit (a loss for it), so a finished A/B always reaches a
verdict. Only a complete A/B is a verdict: an interrupted or failed-in-part one logs its counts so far with
`complete: false` and no `passed`, and fails the step asking for a rerun, which resumes from the checkpoints and
decides (an incomplete A/B is never an output, so never cached).

`promote_or_rollback` acts on the verdict, as a step of its own: a failed gate puts back what served before
(the target's `rollback`), a passed one keeps the deploy. Its `gate_decision` output is what the CLI's exit code
and the rounds read. It never runs from the cache: the rollback is a fact about now, as the deploy is.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step

from engine.rows import file_sha256
from stages.evaluate.stage import TALLY_ONLY, EvaluateSettings
from stages.generate import GenerateSettings
from stages.judge.settings import JudgeSettings
from steps.names import Artifact
from steps.records import ABEval, AdapterRef, JsonlFile, ab_eval_metadata
from steps.stage_io import log_summary, stage_dir
from targets.spec import TargetSpec

logger = logging.getLogger(__name__)


@step
async def evaluate_adapters(
    adapter: AdapterRef,
    val_set: JsonlFile,
    generate: GenerateSettings,
    judge: JudgeSettings,
    settings: EvaluateSettings,
    target: TargetSpec,
    prompts_file: str | None = None,
) -> Annotated[ABEval, ArtifactConfig(name=Artifact.AB_EVAL)]:
    """Sample both served models on the held-out prompts, judge every pair in both orders, tally, and give the
    gate's verdict (how it runs: the run's `Operations`, the generate stage's and the judge's options)."""
    return await _evaluate(adapter, val_set, generate, judge, settings, target, prompts_file)


@step
async def evaluate_vs_previous(
    adapter: AdapterRef,
    previous: AdapterRef,
    val_set: JsonlFile,
    generate: GenerateSettings,
    judge: JudgeSettings,
    settings: EvaluateSettings,
    target: TargetSpec,
    prompts_file: str | None = None,
) -> Annotated[ABEval, ArtifactConfig(name=Artifact.AB_EVAL_PREVIOUS)]:
    """Rounds: the same A/B with the previous round's adapter ("seinfeld-dpo-prev") as the baseline, on the
    same prompts. No gate here (the A/B over SFT guards the deploy): its interval feeds the stop rule."""
    from infra.names import NAMES

    if previous.sha256 == adapter.sha256:
        raise ValueError("the previous round's adapter is this round's: nothing to compare")
    versus = dataclasses.replace(settings, baseline=NAMES.prev_model_name, min_win_rate=None)
    return await _evaluate(adapter, val_set, generate, judge, versus, target, prompts_file, previous=previous)


@step(enable_cache=False)
def promote_or_rollback(
    ab_eval: ABEval,
    target: TargetSpec,
) -> Annotated[dict[str, Any], ArtifactConfig(name=Artifact.GATE_DECISION)]:
    """Keep the deploy when the A/B passed its gate (or has none); else put back what served before it. Returns
    {passed, action: kept | rolled_back, serving, message}."""
    from targets import current_operations, open_target

    decision = decide(ab_eval, open_target(target), current_operations())
    log_metadata(metadata={"passed": decision["passed"], "action": decision["action"],
                           **({"rolled_back": decision["serving"]} if not decision["passed"] else {})})
    return decision


def decide(ab_eval: ABEval, target: Any, ops: Any) -> dict[str, Any]:
    """The gate's decision on `ab_eval` for `target` (a targets.base.Target): keep, or roll back what it serves."""
    if ab_eval.passed:
        return {"passed": True, "action": "kept", "serving": "the deploy stays",
                "message": "no gate: both stay served" if ab_eval.data.get("gate") is None else "the gate passed"}
    record = target.deployment()
    if record is None:
        raise RuntimeError(f"no {target.spec.profile} deployment recorded in {target.spec.state_dir} to roll back")
    restored = target.rollback(record, ops)
    gate = ab_eval.data["gate"]
    which = "length-controlled" if gate.get("on") == "lc" else "raw"  # evaluate.gate_on
    message = (f"{ab_eval.data.get('challenger', 'the DPO adapter')} did not pass the A/B gate: the {which} win "
               f"rate's 95% interval lower end {gate['lower_bound']:.3f} is below evaluate.min_win_rate "
               f"{gate['min_win_rate']:.3f}. Serving was rolled back: {restored}.")
    logger.warning(message)
    return {"passed": False, "action": "rolled_back", "serving": restored, "message": message}


async def _evaluate(adapter: AdapterRef, val_set: JsonlFile, generate: GenerateSettings, judge: JudgeSettings,
                    settings: EvaluateSettings, target: TargetSpec, prompts_file: str | None,
                    previous: AdapterRef | None = None) -> ABEval:
    from stages.evaluate.stage import run_evaluate
    from steps.charts import training_curves, win_rate_chart
    from targets import current_operations, open_target

    prompts = Path(prompts_file) if prompts_file else val_set.path
    live_target, ops = open_target(target), current_operations()
    record = live_target.deployment()
    if record is None:
        raise RuntimeError(f"no {target.profile} deployment recorded in {target.state_dir}: the deploy step must "
                           "run first")
    live = dataclasses.replace(generate, serve_url=record.base_url)
    keyed = {k: v for k, v in dataclasses.asdict(settings).items() if k not in TALLY_ONLY}  # re-tallied, not re-paid
    out = stage_dir(target.workdir, "evaluate", settings={"evaluate": keyed,
                                                          "generate": live.fingerprinted(),
                                                          "judge": judge.fingerprinted()},
                    input=file_sha256(prompts) if prompts_file else val_set.sha256, model=adapter.sha256,
                    **({"previous": previous.sha256} if previous is not None else {}))
    # The baseline's samples depend on the baseline (the SFT model, or the previous round's adapter), the sampling
    # settings and the prompts, not on the adapter under test: sampled once, shared by every A/B against it.
    baseline_key = previous.sha256 if previous is not None else target.model_key
    shared = stage_dir(target.workdir, "evaluate-samples", model=baseline_key,
                       generate={**live.fingerprinted(), "model": settings.baseline, "n": 1},
                       input=file_sha256(prompts) if prompts_file else val_set.sha256)
    run = await run_evaluate(prompts, out, settings, live, judge, ops.ab_sampling(),
                             serve_api_key=live_target.api_key(), judge_options=ops.judge_run,
                             sample_dirs={settings.baseline: shared})
    for summary in [*run.samples.values(), *([run.judge] if run.judge else [])]:
        log_summary(summary)
    result = run.result.to_dict()
    charts = {"win_rate.png": win_rate_chart(result)}
    curves = training_curves(adapter.metrics.get("log_history") or [])
    if curves is not None:
        charts["training_curves.png"] = curves
    forfeits = {f"forfeits_{side}": n for side, n in result["forfeits"].items()}  # answered only blank: losses
    verdict = {"complete": run.result.complete,
               **({"passed": run.result.passed} if run.result.passed is not None else {})}
    log_metadata(metadata={**ab_eval_metadata(result), **forfeits, **verdict})
    if run.exit_code != 0 or not run.result.complete:
        raise RuntimeError(f"the A/B evaluation is incomplete, not a verdict (exit {run.exit_code}; {run.unpaired} "
                           f"prompts unpaired); rerun the pipeline to resume and finish it. Results so far: "
                           f"{run.result.headline()}")
    return ABEval(data=result, markdown=(out / "report.md").read_text(encoding="utf-8"), charts=charts,
                  complete=True, passed=run.result.passed is not False)
