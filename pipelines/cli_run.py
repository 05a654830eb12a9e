"""`run` (the whole pipeline under ZenML) and `dashboard` (ZenML's local dashboard on the project's store).

    python -m pipelines.dpo run [--profile local|modal] [--config FILE] [--limit N] [--workdir DIR] [--no-cache]
                                [--rounds K] [--estimate] [--max-cost USD]
    python -m pipelines.dpo dashboard [--port 8237]

ZenML is imported inside the handlers, after `pipelines.zenml_home` has pointed it at `<repo>/.zenml`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DASHBOARD_PORT = 8237
LOCAL_BANNER = """\
Local profile: the production stack, small. vLLM (CPU build) serves {model}, the offline rubric judge
ranks, DPO trains on the CPU, vLLM is redeployed with both adapters and stays up
(`python -m pipelines.dpo deploy --local --stop` stops it). No account, no network, no cost.
{meaning}
To go to production (vLLM on Modal, GPT-5 judge, L4 training):
  export SERVE_URL=https://...modal.run/v1 OPENAI_API_KEY=sk-...   # and `modal token new` once
  python -m pipelines.dpo run --profile modal          # settings: configs/modal.yaml
"""


def local_banner(local_model: str) -> str:
    if local_model == "tiny":
        return LOCAL_BANNER.format(model="the tiny random model kit",
                                   meaning="Its numbers only prove the plumbing (the model writes gibberish).")
    return LOCAL_BANNER.format(
        model="SmolLM2-135M-Instruct with a short SFT adapter",
        meaning="The A/B gate is on (configs/local.yaml): DPO is judged against SFT on held-out scenes by a "
                "format rubric, not GPT-5.")


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="the whole pipeline under ZenML: generate, judge, split, upload, train, deploy, evaluate, promote or "
        "roll back",
        description="Run every stage as a ZenML pipeline. Finished steps are reused from ZenML's cache and "
        "interrupted stages resume from their checkpoints, so rerunning the same command continues.",
    )
    run.add_argument("--profile", choices=("local", "modal"), default=None,
                     help="local (default): offline, a small real model; modal: production (needs credentials)")
    run.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/<profile>.yaml)")
    run.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    run.add_argument("--workdir", type=Path, default=None,
                     help="working folder for checkpoints (default: data/dpo/<profile>)")
    run.add_argument("--no-cache", action="store_true", help="run every step even if ZenML has its result")
    run.add_argument("--rounds", type=int, default=None,
                     help="on-policy DPO rounds (default: rounds.count in the config, 1): round k samples from "
                     "round k-1's adapter and trains on from it; stops when a round no longer measurably beats "
                     "the one before (pipelines/rounds.py)")
    run.add_argument("--estimate", action="store_true",
                     help="forecast every round's judge and A/B requests and dollars, then exit; sends nothing")
    run.add_argument("--max-cost", type=float, default=None,
                     help="refuse to start when the forecast's expected dollars for the rounds left to run exceed this "
                          "(rounds recorded as finished cost nothing more)")
    run.add_argument("--skip-online-checks", action="store_true",
                     help="modal: check credentials are configured but make no call to prove they work")
    run.set_defaults(func=cmd_run)

    dash = subparsers.add_parser(
        "dashboard",
        help="start ZenML's dashboard on the project's store (.zenml) and print its URL",
        description="Serve ZenML's local dashboard in the foreground (Ctrl-C stops it).",
    )
    dash.add_argument("--port", type=int, default=DASHBOARD_PORT, help="port to listen on")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dash.set_defaults(func=cmd_dashboard)


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.config import PipelineConfigError, load_config, prompts_problem

    try:
        cfg = load_config(profile=args.profile, config_file=args.config, limit=args.limit,
                          workdir=args.workdir, no_cache=args.no_cache, rounds=getattr(args, "rounds", None))
        # A missing prompt file: the modal profile lists it with what else it lacks (the preflight below); anything
        # that reads the prompts before that (the forecast, a local run) stops on it here.
        missing = prompts_problem(cfg)
        if missing and (cfg.is_local or args.estimate or args.max_cost is not None):
            raise PipelineConfigError(missing)
        if cfg.rounds.count > 1 and not missing:
            from pipelines.rounds import check_rounds

            check_rounds(cfg, cfg.rounds)
    except PipelineConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.estimate or args.max_cost is not None:
        refused = _forecast(cfg, args)
        if refused is not None:
            return refused
    if cfg.is_local:
        print(local_banner(cfg.local_model), file=sys.stderr)
    else:
        problems = _preflight(cfg, online=not args.skip_online_checks, missing=missing)
        if problems:
            print("error: the modal profile cannot start; fix these first (nothing was run or paid for):",
                  file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return 2
    limit = cfg.limit if cfg.limit is not None else "all"
    print(f"profile {cfg.profile} ({cfg.source}); prompts {cfg.prompts} (limit {limit}); working folder "
          f"{cfg.workdir}; cache {'on' if cfg.enable_cache else 'off'}", file=sys.stderr)

    from pipelines.zenml_home import init_zenml

    home = init_zenml()
    if cfg.rounds.count > 1:
        return _run_rounds(cfg, home)
    from pipelines.pipeline import run_pipeline

    try:
        run = run_pipeline(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted: finished rows are kept in the checkpoints under "
              f"{cfg.workdir}; run the same command again to continue.", file=sys.stderr)
        return 130
    except RuntimeError as e:  # ZenML's "Pipeline run has failed due to failure in step(s): ..."; logged above
        print(f"\nerror: {e}\nFinished rows and steps are kept: fix the cause, then run the same command again "
              "to continue where it stopped.", file=sys.stderr)
        return 1
    print(render_run(run.id, home))
    from zenml.client import Client

    from pipelines.rounds import gate_decision

    decision = gate_decision(Client().get_pipeline_run(run.id))
    if decision.get("action") == "rolled_back":  # the gate is an output: the run finished, its verdict is no
        print(f"\nerror: {decision['message']}", file=sys.stderr)
        return 1
    return 0


def _forecast(cfg: Any, args: argparse.Namespace) -> int | None:
    """Print the forecast; the exit code when the command ends here (--estimate, or over --max-cost)."""
    from pipelines.forecast import render_stages
    from pipelines.rounds import recorded_rounds
    from pipelines.rounds_cost import forecast_rounds, render_forecast

    done = recorded_rounds(cfg, cfg.rounds)  # finished before: paid, not run again
    forecast = forecast_rounds(cfg, cfg.rounds, recorded=done)
    total = sum(f.cost_usd for f in forecast)  # a recorded round's is 0
    left = f"all {cfg.rounds.count} round(s)" if not done else (
        f"the {cfg.rounds.count - len(done)} round(s) left of {cfg.rounds.count} (round(s) "
        f"{', '.join(map(str, done))} recorded as finished: nothing more to pay)")
    print(f"forecast for {left}, before anything more is sampled or paid (the sampler's max_tokens "
          f"{cfg.generate.max_tokens} per completion):\n{render_forecast(forecast)}", file=sys.stderr)
    for f in forecast:
        if f.stages:
            print(f"\nround {f.round}, stage by stage (hours and dollars; 'assumed' marks what no run here has "
                  f"measured):\n{render_stages(list(f.stages))}", file=sys.stderr)
            judge = next(s for s in f.stages if s.stage == "judge")
            cap = cfg.judge.max_cost_usd
            if cap is not None and judge.usd > cap:
                print(f"note: judge.max_cost_usd ${cap:,.2f} stops the judge after about {cap / judge.usd:.0%} of "
                      f"round {f.round}'s rows (the cap covers the whole run, reruns included): raise it to judge "
                      "them all", file=sys.stderr)
    if args.max_cost is not None and total > args.max_cost:
        print(f"error: the expected ${total:,.2f} for {left} is over --max-cost ${args.max_cost:,.2f}; "
              "nothing was run. Raise --max-cost, or run fewer rounds or fewer prompts (--limit).", file=sys.stderr)
        return 2
    return 0 if args.estimate else None


def _run_rounds(cfg: Any, home: Path) -> int:
    from pipelines.rounds import run_rounds
    from pipelines.rounds_report import REPORT_MD, render_table

    try:
        outcome = run_rounds(cfg, cfg.rounds)
    except KeyboardInterrupt:
        print("\ninterrupted: finished rounds are recorded and finished rows kept in the checkpoints under "
              f"{cfg.workdir}; run the same command again to continue.", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"\nerror: {e}\nFinished rounds, steps and rows are kept: fix the cause, then run the same command "
              "again to continue where it stopped.", file=sys.stderr)
        return 1
    print(render_table(outcome.rounds))
    ran = ", ".join(map(str, outcome.ran)) or "none (every round was finished before)"
    serving = f"round {outcome.deployed} serves as seinfeld-dpo" if outcome.deployed else "no round passed"
    print(f"{outcome.stopped}; {serving}. Rounds run now: {ran}.\nreport: {outcome.report_dir / REPORT_MD}\n"
          f"ZenML store: {home}; browse it with `python -m pipelines.dpo dashboard`")
    return outcome.exit_code


def _preflight(cfg: Any, *, online: bool, missing: str | None = None) -> list[str]:
    from pipelines.preflight import offline_problems, online_problems

    problems = [missing] if missing else []
    problems += offline_problems(cfg)
    if not problems and online:
        print("checking the endpoints and credentials (free calls) ...", file=sys.stderr)
        problems = online_problems(cfg)
    return problems


def render_run(run_id: Any, home: Path) -> str:
    """The run's status, each step's status, every artifact's version, then the answer: the A/B's verdict, its
    report, and how to try the served models (pipelines/answer.py)."""
    from zenml.client import Client

    from pipelines.answer import answer_lines
    from steps.names import Artifact

    run = Client().get_pipeline_run(run_id)
    lines = [f"run {run.name}: {run.status.value}"]
    versions: dict[str, Any] = {}
    for name, step_run in run.steps.items():
        lines.append(f"  step {name}: {step_run.status.value}")
        for output_name, artifacts in step_run.outputs.items():
            for artifact in artifacts:
                versions[output_name] = artifact
    for name in Artifact:
        artifact = versions.get(name)
        if artifact is not None:
            lines.append(f"  artifact {name}: version {artifact.version}")
    deployment = versions.get(Artifact.DEPLOYMENT)
    record = deployment.load() if deployment is not None else None
    if record is not None:
        lines.append(f"deployed: {record.get('base_url')} serving {', '.join(record.get('models', []))}")
    lines.append(f"ZenML store: {home}")
    ab = versions.get(Artifact.AB_EVAL)
    result, files = None, {}
    if ab is not None:
        loaded = ab.load()
        result = loaded.data
        files = {"report": f"{ab.uri}/report.md", **{f"chart {n}": f"{ab.uri}/{n}" for n in sorted(loaded.charts)}}
    lines += ["", *answer_lines(result, files, record)]  # the answer last, where the eye lands
    return "\n".join(lines)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import socket

    with socket.socket() as sock:
        if sock.connect_ex((args.host, args.port)) == 0:
            print(f"error: {args.host}:{args.port} is already in use (a dashboard already running?); open "
                  f"http://{args.host}:{args.port} or pass --port", file=sys.stderr)
            return 2
    from pipelines.zenml_home import init_zenml

    home = init_zenml()
    from zenml.client import Client

    _skip_onboarding(Client())
    url = f"http://{args.host}:{args.port}"
    print(f"ZenML dashboard for {home} at {url} (Ctrl-C stops it)", flush=True)
    latest = _latest_run_id(Client())
    if latest:
        print(f"latest run: {url}/projects/default/runs/{latest}", flush=True)
    import ipaddress

    from zenml.cli.login import start_local_server

    start_local_server(blocking=True, port=args.port, ip_address=ipaddress.ip_address(args.host))
    return 0


def _skip_onboarding(client: Any) -> None:
    """The local store's only user is `default` (no login); mark its sign-up survey as done, with no email and
    no newsletter, so the dashboard opens on the runs instead of a form asking for an email address."""
    user = client.active_user
    if user.email_opted_in is None or not (user.user_metadata or {}).get("finished_onboarding_survey"):
        client.update_user(user.id, updated_email_opt_in=False,
                           updated_metadata={**(user.user_metadata or {}), "finished_onboarding_survey": True})


def _latest_run_id(client: Any) -> str | None:
    from steps.names import PIPELINE_NAME

    try:
        runs = client.list_pipeline_runs(pipeline_name=PIPELINE_NAME, sort_by="desc:created", size=1)
    except KeyError:  # no such pipeline yet
        return None
    return str(runs.items[0].id) if runs.items else None
