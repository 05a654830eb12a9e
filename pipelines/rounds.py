"""`run --rounds K`: on-policy DPO rounds, each one run of the same ZenML pipeline, resumable and cached.

Round 1 is `run`. Round k samples its slice of the training prompts from round k-1's DPO adapter (the served
adapter's checkpoint folder is keyed by that adapter's content hash), judges them, trains the policy on from
round k-1's adapter with the SFT adapter as the frozen reference, deploys it as `seinfeld-dpo` with round k-1's
as `seinfeld-dpo-prev`, and A/Bs it against SFT (the gate, as in every run) and against round k-1 (the stop
rule), on the same held-out prompts.

Each finished round is recorded in `<workdir>/rounds/<key>/round-<k>.json` (key: every setting that defines
the rounds); a rerun reads those records and never samples, judges or trains a finished round again. A round
killed midway has no record: the rerun runs its pipeline again, ZenML's cache skips its finished steps and the
stages resume from their checkpoints. Stop rule: when round k's win rate over round k-1 has its interval's lower
end at or below `min_gain` (0.5: no measurable gain), the rounds stop and round k-1 is put back into service.
A round is recorded only for a verdict: its run finished and its gate step's `gate_decision` artifact says whether
the A/B over SFT kept the deploy (`done`) or rolled serving back (`gate_failed`). A failed run (an interrupted or
incomplete A/B fails its step) is no verdict: no record, and the rerun resumes the A/B from its per-row checkpoints,
then decides. The rounds run on either target (targets/): on Modal the previous round's adapter is served beside as
`seinfeld-dpo-prev`, and a record is trusted while its adapter's folder is on the volume.
Importing this module does not import ZenML (the CLI sets ZenML's home first).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig, PipelineConfigError, RoundsSettings

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RoundRecord:
    """What one finished round left: its run, its adapter (an artifact version), its A/B results."""

    round: int
    run_id: str
    run_name: str
    adapter_id: str  # the dpo_adapter artifact version: the next round's input
    adapter_path: str
    adapter_sha256: str
    preferences_id: str  # this round's own pairs (a `data: all` round merges the earlier ones)
    pairs: int  # preference pairs this round trained on (train + val of its split)
    vs_sft: dict[str, Any]  # AB_KEYS: wins, losses, ties, n, win_rate_all, ci95_all_low/high, complete, passed, ...
    vs_previous: dict[str, Any] | None  # the same against round k-1 (None in round 1)
    cost_usd: float  # judge + A/B judge dollars this round's runs paid
    status: str = "done"  # done, or gate_failed (the complete A/B over SFT refused the deploy; serving rolled back)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RoundsOutcome:
    rounds: list[RoundRecord]
    deployed: int | None  # the round serving as seinfeld-dpo at the end (None: none passed)
    stopped: str  # why the rounds ended
    ran: list[int]  # rounds whose pipeline ran in this call (the others were finished before)
    report_dir: Path

    @property
    def exit_code(self) -> int:
        return 1 if any(r.status != "done" for r in self.rounds) else 0


def check_rounds(cfg: PipelineConfig, settings: RoundsSettings) -> None:
    """Refuse, before anything runs, what the rounds cannot do with this config."""
    if settings.count == 1:
        return
    if cfg.holdout_fraction <= 0 and cfg.evaluate_prompts is None:
        raise PipelineConfigError(
            "rounds compare each round on the same held-out prompts: set holdout_fraction (e.g. 0.4) or "
            "evaluate.prompts"
        )
    if settings.prompts == "fresh":
        if cfg.limit is None:
            raise PipelineConfigError("rounds.prompts: fresh slices need a `limit` (the slice size); set limit or "
                                      "rounds.prompts: all")
        available = _sample_side_rows(cfg)
        if available < settings.count * cfg.limit:
            raise PipelineConfigError(
                f"rounds.prompts: fresh: {settings.count} rounds of {cfg.limit} prompts need "
                f"{settings.count * cfg.limit} training prompts, and {cfg.prompts} has {available} outside the "
                f"hold-out; lower limit to {available // settings.count}, run fewer rounds, or use "
                "rounds.prompts: all"
            )


def _sample_side_rows(cfg: PipelineConfig) -> int:
    from stages.split import held_out_line

    return sum(1 for line in cfg.prompts.read_bytes().splitlines()
               if line.strip() and not (cfg.holdout_fraction > 0 and held_out_line(line, cfg.holdout_fraction)))


def rounds_dir(cfg: PipelineConfig, settings: RoundsSettings, params: dict[str, Any]) -> Path:
    """`<workdir>/rounds/<key>`: the key hashes every parameter but the place tokens, and the rounds settings."""
    from steps.stage_io import stage_key

    stable = {k: v for k, v in params.items() if not k.endswith("_token")}
    key = stage_key(params=stable, prompts=settings.prompts, data=settings.data)
    return Path(cfg.workdir) / "rounds" / key


def round_parameters(base: dict[str, Any], settings: RoundsSettings, k: int,
                     done: list[RoundRecord]) -> dict[str, Any]:
    """Round k's pipeline parameters: round 1's are the plain run's (so a plain run's cache serves it)."""
    params = dict(base)
    if k == 1:
        return params
    prompts, inputs = base["prompts"], base["round_inputs"]
    offset = (k - 1) * prompts.limit if settings.prompts == "fresh" else 0
    params["prompts"] = dataclasses.replace(prompts, offset=offset)
    params["round_inputs"] = dataclasses.replace(
        inputs, previous_adapter_id=done[-1].adapter_id,
        earlier_preferences_ids=tuple(r.preferences_id for r in done) if settings.data == "all" else ())
    return params


def load_record(folder: Path, k: int, target: Any = None) -> RoundRecord | None:
    """Round k's record when its adapter is still the one recorded, where the target keeps it (`target`: a
    targets.base.Target; None: the local disk), else None: the round runs again."""
    path = folder / f"round-{k}.json"
    if not path.is_file():
        return None
    record = RoundRecord(**json.loads(path.read_text()))
    if record.status == "gate_failed" and failed_status(record.vs_sft) is None:
        logger.warning("round %d's gate_failed record has no complete A/B with a rollback behind it (an earlier "
                       "version recorded an interrupted A/B so): the round runs again and its A/B resumes", k)
        return None
    from targets.local import adapter_in_place

    present = target.adapter_in_place if target is not None else adapter_in_place
    if not present(record.adapter_path, record.adapter_sha256):
        logger.warning("round %d's adapter %s is gone or changed: the round runs again", k, record.adapter_path)
        return None
    return record


def recorded_rounds(cfg: PipelineConfig, settings: RoundsSettings) -> list[int]:
    """The rounds a rerun of these rounds will not run again (a trusted record, as `run_rounds` reads them):
    they are paid for. Without any round record under the workdir, [] without computing the rounds' key (that
    takes the pipeline's parameters, which imports ZenML: its home is set first)."""
    if settings.count == 1 or not any((Path(cfg.workdir) / "rounds").glob("*/round-*.json")):
        return []
    from pipelines.zenml_home import use_project_home

    use_project_home()
    from pipelines.pipeline import pipeline_parameters

    folder = rounds_dir(cfg, settings, pipeline_parameters(cfg))
    target = _target(cfg)
    return [k for k in range(1, settings.count + 1) if load_record(folder, k, target) is not None]


def save_record(folder: Path, record: RoundRecord) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    from infra.atomic import write_json

    write_json(folder / f"round-{record.round}.json", record.to_dict())


def stop_reason(record: RoundRecord, settings: RoundsSettings) -> str | None:
    """Why the rounds stop after this one (None: go on)."""
    if record.status == "gate_failed":
        rolled_back = record.vs_sft.get("rolled_back")  # what the evaluate step's rollback left serving
        return (f"round {record.round} failed the A/B gate against SFT (lower end "
                f"{record.vs_sft.get('ci95_all_low', float('nan')):.3f})"
                + (f"; serving was rolled back: {rolled_back}" if rolled_back else ""))
    if record.vs_previous is None:
        return None
    low = record.vs_previous["ci95_all_low"]
    if low <= settings.min_gain:
        return (f"round {record.round} over round {record.round - 1}: the 95% interval's lower end {low:.3f} is at "
                f"or below rounds.min_gain {settings.min_gain} (no measurable gain)")
    return None


def best_round(records: list[RoundRecord], settings: RoundsSettings) -> RoundRecord | None:
    """The round to keep serving: the last that passed its gate and, after round 1, measurably beat the one
    before it (its head-to-head interval's lower end above min_gain)."""
    best = None
    for record in records:
        if record.status != "done":
            break
        if record.vs_previous is not None and record.vs_previous["ci95_all_low"] <= settings.min_gain:
            break
        best = record
    return best


def run_rounds(cfg: PipelineConfig, settings: RoundsSettings) -> RoundsOutcome:
    """Run (or resume) the rounds; returns every round's record and what serves at the end."""
    from pipelines.pipeline import pipeline_parameters

    check_rounds(cfg, settings)
    folder = rounds_dir(cfg, settings, pipeline_parameters(cfg))
    records: list[RoundRecord] = []
    ran: list[int] = []
    stopped = f"all {settings.count} rounds ran"
    target = _target(cfg)
    for k in range(1, settings.count + 1):
        record = load_record(folder, k, target)
        if record is None:
            logger.info("round %d of %d: running", k, settings.count)
            record = _run_round(cfg, settings, k, records)
            save_record(folder, record)
            ran.append(k)
        else:
            logger.info("round %d of %d: finished before (run %s), not run again", k, settings.count,
                        record.run_name)
        records.append(record)
        reason = stop_reason(record, settings)
        if reason:
            stopped = f"stopped after round {k}: {reason}"
            break
    best = best_round(records, settings)
    if best is not None and best is not records[-1]:
        _serve_round(cfg, best)
    from pipelines.rounds_report import write_report

    write_report(folder, records, settings, deployed=best.round if best else None, stopped=stopped,
                 save_artifact=bool(ran))
    return RoundsOutcome(records, best.round if best else None, stopped, ran, folder)


def _run_round(cfg: PipelineConfig, settings: RoundsSettings, k: int, done: list[RoundRecord]) -> RoundRecord:
    """Run round k's pipeline; a failed run (a step failed, or the A/B is incomplete) is no verdict and raises (the
    rerun resumes). A finished one is recorded with what its gate decided (the gate_decision artifact)."""
    from zenml.client import Client

    from pipelines.pipeline import configured_pipeline, pipeline_parameters
    from steps.names import PIPELINE_NAME

    params = round_parameters(pipeline_parameters(cfg), settings, k, done)  # place tokens taken now
    run = configured_pipeline(cfg, f"{PIPELINE_NAME}-{cfg.profile}-round{k}-{{date}}-{{time}}")(**params)
    finished = Client().get_pipeline_run(run.id)
    decision = gate_decision(finished)
    return _record(Client(), finished, k, status="gate_failed" if decision.get("action") == "rolled_back" else "done",
                   rolled_back=decision.get("serving") if decision.get("action") == "rolled_back" else None)


def gate_decision(run: Any) -> dict[str, Any]:
    """What the run's gate did: its promote_or_rollback step's `gate_decision` artifact ({} when it has none)."""
    from steps.names import Artifact

    step_run = run.steps.get("promote_or_rollback")
    outputs = step_run.outputs.get(Artifact.GATE_DECISION) if step_run is not None else None
    return dict(outputs[0].load()) if outputs else {}


def failed_status(vs_sft: dict[str, Any]) -> str | None:
    """A round's status from a record's vs_sft: gate_failed when the A/B was complete, its gate refused the deploy
    and serving was rolled back; None when that is not a verdict (an older record of an interrupted A/B)."""
    if vs_sft.get("complete") is True and vs_sft.get("passed") is False and vs_sft.get("rolled_back"):
        return "gate_failed"
    return None


def _step_metadata(run: Any, step: str) -> dict[str, Any]:
    step_run = run.steps.get(step)
    return dict(step_run.run_metadata) if step_run is not None else {}


def _output(run: Any, step: str, name: str) -> Any:
    outputs = run.steps[step].outputs.get(name) or []
    if not outputs:
        raise RuntimeError(f"run {run.name}: step {step} has no output {name!r}")
    return outputs[0]


def _record(client: Any, run: Any, k: int, status: str = "done", rolled_back: str | None = None) -> RoundRecord:
    from zenml import log_metadata

    from steps.names import Artifact

    adapter_version = _output(run, "train_adapter", Artifact.ADAPTER)
    adapter = adapter_version.load()
    judge = _step_metadata(run, "judge_preferences")
    split = _step_metadata(run, "split_dataset")
    vs_sft = _ab_numbers(_step_metadata(run, "evaluate_adapters"))
    if rolled_back:  # what the gate's rollback left serving
        vs_sft["rolled_back"] = rolled_back
    vs_previous = _ab_numbers(_step_metadata(run, "evaluate_vs_previous")) if k > 1 and status == "done" else None
    cost = float(judge.get("cost_usd") or 0) + float(vs_sft.get("cost_usd") or 0) + \
        float((vs_previous or {}).get("cost_usd") or 0)
    record = RoundRecord(
        round=k, run_id=str(run.id), run_name=run.name, adapter_id=str(adapter_version.id),
        adapter_path=adapter.path, adapter_sha256=adapter.sha256,
        preferences_id=str(_output(run, "judge_preferences", Artifact.PREFERENCES).id),
        pairs=int(split.get("n_train") or 0) + int(split.get("n_val") or 0),
        vs_sft=vs_sft, vs_previous=vs_previous, cost_usd=round(cost, 6), status=status,
    )
    _tag_round(run, k)
    log_metadata(metadata={"round": k, "round_status": status}, run_id_name_or_prefix=run.id)
    return record


AB_KEYS = ("wins", "losses", "ties", "n", "win_rate_all", "ci95_all_low", "ci95_all_high", "cost_usd",
           "gate_passed", "order_agreement", "complete", "passed", "rolled_back",
           # the length-controlled win rate and the judge's reliability ledger (absent in records before issue 31)
           "lc_win_rate", "lc_ci95_low", "lc_ci95_high", "lc_disagrees", "gate_on", "flip_rate", "tie_rate",
           "longer_wins", "human_votes", "human_agreement", "judge_warnings", "judge_model", "judge_reasoning_effort",
           "judge_prompt_version", "judge_rubric_version")


def _ab_numbers(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in AB_KEYS if k in meta}


def _tag_round(run: Any, k: int) -> None:
    """Put `round: k` on every artifact version this round's run made (cached ones keep their own round)."""
    from zenml import log_metadata
    from zenml.enums import ExecutionStatus

    for step_run in run.steps.values():
        if step_run.status != ExecutionStatus.COMPLETED and step_run.status != ExecutionStatus.FAILED:
            continue
        for versions in step_run.outputs.values():
            for version in versions:
                log_metadata(metadata={"round": k}, artifact_version_id=version.id)


def _serve_round(cfg: PipelineConfig, record: RoundRecord) -> None:
    """Serve `record`'s adapter as seinfeld-dpo again (the stop rule's choice), unless it already is."""
    from infra.names import NAMES
    from steps.records import AdapterRef
    from targets import operations_of

    target = _target(cfg)
    live = target.deployment()
    served = {a.name: a.sha256 for a in live.adapters} if live is not None else {}
    if served.get(NAMES.dpo_model_name) == "sha256:" + record.adapter_sha256 and NAMES.prev_model_name not in served \
            and target.deployment_in_place(live):
        return
    logger.info("serving round %d's adapter as %s again", record.round, NAMES.dpo_model_name)
    adapter = AdapterRef(name=NAMES.dpo_model_name, path=record.adapter_path, sha256=record.adapter_sha256,
                         base_model="", steps=0)
    target.serve({NAMES.dpo_model_name: adapter}, operations_of(cfg))


def _target(cfg: PipelineConfig) -> Any:
    """The run's target (targets/), where its adapters are kept and served."""
    from targets import open_target, target_spec

    return open_target(target_spec(cfg))
