"""`publish`: a finished run's preference set (Parquet + dataset card) and DPO adapter (+ model card) in a folder,
optionally pushed to the Hugging Face Hub.

    python -m pipelines.dpo publish [--run latest|NAME|ID] --out DIR [--force] [--push-to-hub REPO]
                                    [--adapter-repo REPO] [--public] [--base-model ID] [--license ID]

The run's records come from ZenML (`load_source`: outputs of its judge, split, train, evaluate and gate steps, its
parameters); writing and pushing are pipelines/publish.py's, on plain files. ZenML is imported inside the handler,
after `pipelines.zenml_home` has pointed it at the project's store.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from pipelines.publish import PublishError, PublishSource, TrainedAdapter

logger = logging.getLogger(__name__)

LATEST = "latest"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish",
        help="a run's preference pairs as a Hugging Face dataset and its DPO adapter with a model card (--push-to-hub)",
        description="Write a run's train/validation pairs as Parquet with a dataset card (provenance: prompts, "
        "sampling, judge, counts, the judge's bias figures) and a copy of its DPO adapter with a model card "
        "(base model, SFT adapter hash, training settings, the A/B result) into --out. With --push-to-hub REPO and "
        "HF_TOKEN set, push both (private unless --public). docs/publishing.md says what is written and what not.",
    )
    p.add_argument("--run", default=LATEST,
                   help="the run: its name, id or id prefix, or `latest` (the newest completed run; default)")
    p.add_argument("--out", type=Path, required=True, help="folder to write into (absent or empty)")
    p.add_argument("--force", action="store_true", help="replace an earlier publish in --out")
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="also push: the dataset to REPO (OWNER/NAME), the adapter to REPO-adapter; token from HF_TOKEN")
    p.add_argument("--adapter-repo", metavar="REPO", default=None,
                   help="the adapter's model repo (default REPO-adapter)")
    p.add_argument("--public", action="store_true", help="create the Hub repositories public (default: private)")
    p.add_argument("--base-model", metavar="ID", default=None,
                   help="the base model's Hub id for the adapter card (needed to push when training used a local "
                   "folder); also written into the copy's adapter_config.json")
    p.add_argument("--license", dest="license_id", metavar="ID", default="other",
                   help="license id for both cards (default `other`: a placeholder to choose before going public)")
    p.add_argument("--adapter-dir", type=Path, default=None,
                   help="a local copy of the run's adapter (a modal run keeps it on the volume); checked by hash")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    from pipelines.publish import hub_token, publish, push_to_hub

    repo = args.push_to_hub
    adapter_repo = args.adapter_repo or (f"{repo}-adapter" if repo else None)
    for flag, value in (("--push-to-hub", repo), ("--adapter-repo", adapter_repo)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):
            raise PublishError(f"{flag} must be a Hub repository id OWNER/NAME, got {value!r}")
    if args.public and not repo:
        raise PublishError("--public applies to --push-to-hub REPO; without a push nothing is made public")
    token = hub_token(dict(os.environ)) if repo else None  # before anything is written
    source = load_source(args.run, adapter_dir=args.adapter_dir)
    published = publish(source, args.out, force=args.force, repo=repo, adapter_repo=adapter_repo,
                        base_model=args.base_model, license_id=args.license_id)
    c = published.counts
    print(f"run {source.run_name}: {c['train'] + c['validation']} pairs ({c['train']} train, {c['validation']} "
          f"validation) in {args.out}" + (f"; adapter and its card in {published.adapter_dir}"
                                          if published.adapter_dir else "; the run has no adapter"), file=sys.stderr)
    if not repo:
        return 0
    import httpx2  # huggingface_hub's HTTP client: its errors (and HfHubHTTPError, an OSError too) end the push

    try:
        urls = push_to_hub(published, repo=repo, adapter_repo=adapter_repo, token=token, private=not args.public)
    except (OSError, httpx2.HTTPError) as e:
        print(f"error: the push failed ({_first_line(e)}); the folder {args.out} is complete: fix the cause (token "
              "scope, repository name, network) and run the same command with --force to push again",
              file=sys.stderr)
        return 1
    for url in urls:
        print(f"pushed: {url} ({'public' if args.public else 'private'})", file=sys.stderr)
    return 0


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# -- the run's records in ZenML ------------------------------------------------------------------------------------


def load_source(run_ref: str, *, adapter_dir: Path | None = None) -> PublishSource:
    """What publish reads from the run `run_ref` (a name, id, id prefix, or `latest`) in the project's store."""
    from pipelines.zenml_home import init_zenml

    home = init_zenml()
    from zenml.client import Client

    from steps.names import PIPELINE_NAME

    return source_from_run(_find_run(Client(), run_ref, PIPELINE_NAME, home), adapter_dir=adapter_dir)


def source_from_run(run: Any, *, adapter_dir: Path | None = None) -> PublishSource:
    """`load_source` on a run already found (ZenML's PipelineRunResponse: its steps, outputs, parameters)."""
    from steps.names import Artifact, Step

    judge_step = run.steps.get(Step.JUDGE)
    if judge_step is None or not judge_step.outputs.get(Artifact.PREFERENCES):
        raise PublishError(f"run {run.name} has no judge output (step {Step.JUDGE} {_status(judge_step)}): nothing "
                           "to publish; finish the run (rerun the same `run` command) or pick another with --run")
    split_step = run.steps.get(Step.SPLIT)
    if split_step is None or not split_step.outputs.get(Artifact.TRAIN_SET):
        raise PublishError(f"run {run.name} has no split output (step {Step.SPLIT} {_status(split_step)}); finish "
                           "the run or pick another with --run")
    params = run.config.parameters or {}
    report = _output(run, Step.JUDGE, Artifact.QUALITY_REPORT).load().data
    judge_params = params.get("judge") or {}
    generate_params = params.get("generate") or {}
    target = params.get("target") or {}
    prompts = params.get("prompts") or {}
    gen_meta = dict(run.steps[Step.GENERATE].run_metadata) if Step.GENERATE in run.steps else {}
    sampling = {"model": gen_meta.get("model") or generate_params.get("model"),
                **({"sampled adapter sha256": gen_meta["sampled_adapter_sha256"]}
                   if gen_meta.get("sampled_adapter_sha256") else {}),
                "model key": target.get("model_key"),
                **{k: generate_params.get(k) for k in ("n", "temperature", "max_tokens", "seed")}}
    return PublishSource(
        run_name=run.name, run_id=str(run.id), round=_round(run),
        train=_output(run, Step.SPLIT, Artifact.TRAIN_SET).load().path,
        val=_output(run, Step.SPLIT, Artifact.VAL_SET).load().path,
        judge_report=report,
        prompts_file=str(prompts.get("file", "?")), prompts_sha256=str(prompts.get("sha256", "?")),
        sampling=sampling,
        judge=judge_info(report, judge_params),
        judged_pairs=int(dict(judge_step.run_metadata).get("pairs", 0)) or None,
        row_rounds=_earlier_rounds(run),
        adapter=_adapter(run, params, adapter_dir),
        ab_result=_load_or_none(run, Step.EVALUATE, Artifact.AB_EVAL, lambda a: a.data),
        gate=_load_or_none(run, Step.PROMOTE, Artifact.GATE_DECISION, dict),
    )


def _find_run(client: Any, run_ref: str, pipeline_name: str, home: Path) -> Any:
    if run_ref == LATEST:
        try:
            page = client.list_pipeline_runs(pipeline_name=pipeline_name, sort_by="desc:created", status="completed",
                                             size=1)
        except KeyError:  # no such pipeline yet
            page = None
        if page is None or not page.items:
            raise PublishError(f"no completed run of the pipeline in the ZenML store {home}; run "
                               "`python -m pipelines.dpo run` first, or name a run with --run")
        return client.get_pipeline_run(page.items[0].id)
    try:
        return client.get_pipeline_run(run_ref)
    except KeyError:
        raise PublishError(f"no run named {run_ref!r} (name, id or id prefix) in the ZenML store {home}; see "
                           "`python -m pipelines.dpo dashboard` for the runs, or use --run latest") from None


def _status(step: Any) -> str:
    return "did not run" if step is None else f"is {step.status.value}"


def _output(run: Any, step: str, name: str) -> Any:
    outputs = run.steps[step].outputs.get(name) or []
    if not outputs:
        raise PublishError(f"run {run.name}: step {step} has no output {name!r}")
    return outputs[0]


def _load_or_none(run: Any, step: str, name: str, convert: Any) -> Any:
    step_run = run.steps.get(step)
    outputs = step_run.outputs.get(name) if step_run is not None else None
    return convert(outputs[0].load()) if outputs else None


def _round(run: Any) -> int:
    """The run's round: recorded by `run --rounds` as run metadata, else in its name (`...-round2-...`), else 1."""
    recorded = dict(run.run_metadata).get("round")
    if isinstance(recorded, int):
        return recorded
    match = re.search(r"-round(\d+)-", run.name)
    return int(match.group(1)) if match else 1


def _earlier_rounds(run: Any) -> dict[str, int]:
    """Rounds with `data: all` train on earlier rounds' pairs too (merge_preferences steps): row id -> its round,
    from the round each earlier artifact was tagged with (pipelines/rounds.py)."""
    rows: dict[str, int] = {}
    for name, step_run in run.steps.items():
        if not name.startswith("merge_preferences"):
            continue
        earlier = step_run.inputs.get("earlier")
        version = earlier[0] if isinstance(earlier, list) else earlier
        k = dict(version.run_metadata).get("round") if version is not None else None
        if not isinstance(k, int):
            continue
        import orjson

        for line in version.load().path.read_bytes().splitlines():
            if line.strip():
                rows.setdefault(str(orjson.loads(line).get("id")), k)
    return rows


def judge_info(report: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The judge as the cards show it: what its rows recorded (report.json, its reliability ledger's `judge` where
    the report has one) and its settings."""
    from pipelines.publish import sha256_bytes
    from stages.judge.prompt import PROMPT_VERSION, RUBRIC

    recorded = {**(report.get("judge") or {}), **((report.get("ledger") or {}).get("judge") or {})}
    version = recorded.get("prompt_version")
    offline = recorded.get("rubric_version") or (recorded.get("backend") == "reference" and recorded.get("model"))
    if recorded.get("prompt_sha256"):
        prompt_sha = recorded["prompt_sha256"]
    elif offline:
        prompt_sha = "n/a (an offline rubric: no prompt is sent)"
    elif version == PROMPT_VERSION:
        prompt_sha = sha256_bytes(RUBRIC.encode())
    else:
        prompt_sha = (f"{version.rsplit('-', 1)[-1]}... (the version's prefix; this checkout's prompt differs)"
                      if version else "unknown")
    return {"backend": recorded.get("backend") or params.get("backend"),
            "model": recorded.get("model") or params.get("judge_model"),
            "reasoning effort": recorded.get("reasoning_effort") or "n/a (the backend takes none)",
            "prompt version": version,
            "prompt sha256": prompt_sha,
            "rubric version": offline or version,
            "swap check": bool(params.get("swap_check")),
            "min confidence": params.get("min_confidence"),
            "mode": params.get("mode", "live")}


def _adapter(run: Any, params: dict[str, Any], adapter_dir: Path | None) -> TrainedAdapter | None:
    """The run's DPO adapter (None when it trained none), with its training settings and the SFT adapter's hash."""
    import json

    from infra.adapter_hash import adapter_sha256
    from steps.names import Artifact, Step

    ref = _load_or_none(run, Step.TRAIN, Artifact.ADAPTER, lambda a: a)
    if ref is None:
        return None
    path = Path(adapter_dir) if adapter_dir is not None else Path(ref.path)
    if ref.location != "local" and adapter_dir is None:
        raise PublishError(f"run {run.name}'s adapter is on the Modal volume ({ref.path}); download that folder "
                           "(`modal volume get`) and pass it with --adapter-dir")
    record_path = path / "training_metrics.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    config = record.get("config") or dict(params.get("train") or {})
    sft = config.get("sft_adapter") or ""
    model_key = str((params.get("target") or {}).get("model_key") or "")
    if sft and Path(sft).is_dir():
        sft_sha = adapter_sha256(sft)
    elif model_key.startswith("sft-adapter-"):
        sft_sha = model_key.removeprefix("sft-adapter-") + " (the folder name's prefix)"
    else:
        sft_sha = "unknown (the SFT adapter is not on this machine)"
    return TrainedAdapter(path=path, sha256=ref.sha256, base_model=ref.base_model, steps=ref.steps,
                          metrics=dict(ref.metrics), config=config, sft_adapter_sha256=sft_sha)
