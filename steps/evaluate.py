"""Step: did DPO make the model better? The judged A/B win rate of "seinfeld-dpo" over "seinfeld".

Runs after the deploy step against what is live (local: the recorded local vLLM and its key; modal: the
recorded Modal endpoint, key from SERVE_API_KEY), on the split's val set (prompts DPO never trained on)
unless `prompts_file` names another. Records the `ab_eval` artifact: the numbers as metadata, the report, a
win-rate chart and the DPO training curves as dashboard visualizations. With `settings.min_win_rate` set,
a result whose 95% interval's lower end is below it fails the step, after putting the previous DPO adapter
back (serving/rollback.py). A prompt a model answers only blank is a forfeit (a loss for it), so the step
always reaches a verdict; other failures (HTTP errors, timeouts) still ask for a rerun.

Only a complete A/B is a verdict. The step's metadata says which: `complete`, and `passed` only when complete
(the gate's verdict; True with no gate), `rolled_back` (what serves now) once a failed gate put the previous
adapter back. An interrupted or failed-in-part A/B logs its counts so far with `complete: false` and no
`passed`/`gate_passed`, and fails the step asking for a rerun, which resumes from the checkpoints and decides.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step

from engine.evaluation.stage import EvaluateSettings
from engine.generate import GenerateSettings
from engine.judge.settings import JudgeSettings
from engine.options import RunOptions
from engine.rows import file_sha256
from steps.names import Artifact
from steps.records import ABEval, AdapterRef, JsonlFile, ab_eval_metadata
from steps.stage_io import log_summary, stage_dir

logger = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """The DPO adapter did not beat the SFT one by the configured margin; the message has the numbers."""


@step
async def evaluate_adapters(
    adapter: AdapterRef,
    val_set: JsonlFile,
    workdir: str,
    generate: GenerateSettings,
    judge: JudgeSettings,
    options: RunOptions,
    settings: EvaluateSettings,
    target: str = "local",
    state_dir: str = "data/runs/serving",
    prompts_file: str | None = None,
    model_key: str = "",
    judge_options: RunOptions | None = None,
) -> Annotated[ABEval, ArtifactConfig(name=Artifact.AB_EVAL)]:
    """Sample both served models on the held-out prompts (`options`: the generate stage's), judge every pair in
    both orders (`judge_options`: the judge's; None = `options`), tally, gate."""
    return await _evaluate(adapter, val_set, workdir, generate, judge, options, settings, target, state_dir,
                           prompts_file, model_key, judge_options=judge_options)


@step
async def evaluate_vs_previous(
    adapter: AdapterRef,
    previous: AdapterRef,
    val_set: JsonlFile,
    workdir: str,
    generate: GenerateSettings,
    judge: JudgeSettings,
    options: RunOptions,
    settings: EvaluateSettings,
    state_dir: str = "data/runs/serving",
    prompts_file: str | None = None,
    judge_options: RunOptions | None = None,
) -> Annotated[ABEval, ArtifactConfig(name=Artifact.AB_EVAL_PREVIOUS)]:
    """Rounds: the same A/B with the previous round's adapter ("seinfeld-dpo-prev") as the baseline, on the
    same prompts. No gate here (the A/B over SFT guards the deploy): its interval feeds the stop rule."""
    from infra.names import NAMES

    if previous.sha256 == adapter.sha256:
        raise ValueError("the previous round's adapter is this round's: nothing to compare")
    versus = dataclasses.replace(settings, baseline=NAMES.prev_model_name, min_win_rate=None)
    return await _evaluate(adapter, val_set, workdir, generate, judge, options, versus, "local", state_dir,
                           prompts_file, "", previous=previous, judge_options=judge_options)


async def _evaluate(adapter: AdapterRef, val_set: JsonlFile, workdir: str, generate: GenerateSettings,
                    judge: JudgeSettings, options: RunOptions, settings: EvaluateSettings, target: str,
                    state_dir: str, prompts_file: str | None, model_key: str,
                    previous: AdapterRef | None = None, judge_options: RunOptions | None = None) -> ABEval:
    from engine.evaluation.stage import run_evaluate
    from serving.deploy import load_record, local_api_key
    from steps.charts import training_curves, win_rate_chart

    prompts = Path(prompts_file) if prompts_file else val_set.path
    record = load_record(Path(state_dir), target)
    if record is None:
        raise RuntimeError(f"no {target} deployment recorded in {state_dir}: the deploy step must run first")
    key = local_api_key(Path(state_dir)) if target == "local" else os.environ.get("SERVE_API_KEY")
    live = dataclasses.replace(generate, serve_url=record.base_url)
    out = stage_dir(workdir, "evaluate", settings={"evaluate": dataclasses.asdict(settings),
                                                   "generate": live.fingerprinted(),
                                                   "judge": judge.fingerprinted()},
                    input=file_sha256(prompts) if prompts_file else val_set.sha256, model=adapter.sha256,
                    **({"previous": previous.sha256} if previous is not None else {}))
    run = await run_evaluate(prompts, out, settings, live, judge, options, serve_api_key=key,
                             judge_options=judge_options)
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
    gate = result.get("gate")
    if run.result.passed is False and gate is not None:
        restored = _roll_back(target, Path(state_dir), record, model_key)
        log_metadata(metadata={"rolled_back": restored})
        raise GateFailed(
            f"{settings.challenger} did not pass the A/B gate: the 95% interval's lower end "
            f"{gate['lower_bound']:.3f} is below evaluate.min_win_rate {gate['min_win_rate']:.3f} "
            f"({run.result.headline()}). Serving was rolled back: {restored}."
        )
    return ABEval(data=result, markdown=(out / "report.md").read_text(encoding="utf-8"), charts=charts)


def _roll_back(target: str, state_dir: Path, record: Any, model_key: str) -> str:
    """Put the previous DPO adapter back; says what serves now."""
    from infra.names import NAMES
    from serving.rollback import rollback_local, rollback_modal

    if target == "local":
        from training.local_kit import ensure_local_kit

        kit = ensure_local_kit(model_key)
        live = rollback_local(state_dir, kit.base_dir, {NAMES.sft_model_name: kit.sft_adapter_dir})
        served = {a.name: a.path for a in live.adapters}
        if NAMES.dpo_model_name not in served:
            return f"the local server serves {NAMES.sft_model_name} alone (no earlier DPO adapter to go back to)"
        return f"the local server serves {NAMES.dpo_model_name} from {served[NAMES.dpo_model_name]} again"
    live = rollback_modal(state_dir, record)  # to the version live before this deploy, by number; records follow
    if live is None:
        return (f"{record.app_name or NAMES.serve_app} is back at v{record.previous_app_version}, whose adapters "
                "are not recorded here (the deployment record was removed: the next run deploys)")
    version = f" as v{live.app_version}" if live.app_version is not None else ""
    return f"the Modal app serves {({a.name: a.path for a in live.adapters})} again{version}"
