"""The CI smoke run of the ZenML pipeline, through the CLI, on the local profile (6 prompts).

One chain of three runs against one temporary ZenML store, each checked with ZenML's Client:
1. killed (SIGKILL, whole process group) while the judge is half way;
2. rerun: the judge resumes from its checkpoint (no pair lost, none duplicated, no judgment paid twice),
   the run succeeds, every artifact has a version and the lineage links them end to end;
3. rerun with nothing changed but how it runs (another port, deploy timeout and concurrency: operational
   settings, carried in ZenML's `extra`, in no cache key): every step is served from ZenML's cache, upload and
   deploy included (their place tokens say the files and the server are still in place), but the gate step,
   which never is: no new artifact version but the gate's decision, no restart;
4. the local server stopped, rerun: only the deploy step runs (its token changed) and starts a server.
The judge is the project's fake OpenAI server (testserver) with a little latency, so judging takes long
enough to be interrupted and the server counts every judgment request. Everything else is the shipped
local profile: the tiny model served locally, CPU DPO, local redeploy. Plus: the modal profile without
credentials fails fast naming each one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 6
JUDGE_LATENCY_S = 0.5  # per judgment: six rows take ~3 s, long enough to kill the run half way
KILL_AFTER_PAIRS = 2
OTHER_TIMEOUT_S = 321.0  # the cached run's deploy timeout: an operational setting, in no cache key

# Four pipeline runs in one module fixture (~4.5 min alone; more beside the other worker, or when a fresh clone
# builds the tiny kit first): past the suite's 300 s per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean_env(zenml_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SERVE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "JUDGE_MODEL")}
    env["ZENML_CONFIG_PATH"] = str(zenml_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.dpo", *args]


@pytest.fixture(scope="module")
def judge_server():
    from testserver import start_server

    with start_server(model_latency={"gpt-5": JUDGE_LATENCY_S}) as server:
        yield server


@pytest.fixture(scope="module")
def chain(tmp_path_factory, judge_server):
    """Run the three pipeline runs once; yields what the tests below check."""
    base = tmp_path_factory.mktemp("pipeline")
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["workdir"] = str(base / "work")
    config["deploy"]["state_dir"] = str(base / "serving")
    config["judge"] = {"backend": "openai", "judge_url": judge_server.url, "judge_model": "gpt-5",
                       "concurrency": 1, "progress": False}
    config["evaluate"] = {"judge_backend": "reference"}  # the A/B judge: offline, so the server counts the pairs
    config_file = base / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    operations = {**config, "deploy": {**config["deploy"], "timeout_s": OTHER_TIMEOUT_S, "port": _free_port()},
                  "judge": {**config["judge"], "concurrency": 3}}  # only how it runs changes
    other_ops_file = base / "config-other-operations.yaml"
    other_ops_file.write_text(yaml.safe_dump(operations))
    env = _clean_env(base / "zenml")
    cmd = _cli("run", "--config", str(config_file), "--limit", str(LIMIT))
    result: dict = {"base": base, "work": base / "work", "server": judge_server}
    try:
        result["killed_at_pairs"] = _run_and_kill_during_judging(cmd, env, base)
        result["requests_before_rerun"] = judge_server.stats(log=False)["by_kind"].get("judge", 0)
        for name in ("resumed", "cached", "redeployed"):
            if name == "redeployed":
                _stop_local_server(base / "serving")
            run_cmd = cmd if name != "cached" else _cli("run", "--config", str(other_ops_file), "--limit", str(LIMIT))
            proc = subprocess.run(run_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
            result[name] = proc
            assert proc.returncode == 0, f"{name} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
            if name == "resumed":
                result["requests_after_resume"] = judge_server.stats(log=False)["by_kind"].get("judge", 0)
            result[f"live_pid_after_{name}"] = _live_pid(base / "serving")
        result["runs"] = _runs(base / "zenml")
        yield result
    finally:
        _stop_local_server(base / "serving")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_and_kill_during_judging(cmd: list[str], env: dict[str, str], base: Path) -> int:
    log = (base / "killed.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            checkpoints = list((base / "work" / "judge").glob("*/preferences.jsonl"))
            pairs = len(_read_jsonl(checkpoints[0])) if checkpoints else 0
            if pairs >= KILL_AFTER_PAIRS:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return pairs
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    pytest.fail(f"the run never reached judging (rc {proc.returncode}):\n{(base / 'killed.log').read_text()[-6000:]}")


def _runs(zenml_home: Path) -> list[dict]:
    """Every run of the pipeline, oldest first, as plain data. Read in a subprocess: ZenML reads its store's
    location once per process, and this pytest process must not touch the user's store."""
    code = "from tests.test_pipeline import probe; probe()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(zenml_home),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe() -> None:
    """Print every run of the pipeline in $ZENML_CONFIG_PATH as one JSON line (see `_runs`)."""
    import dataclasses

    from pipelines.zenml_home import init_zenml

    init_zenml()
    from zenml.client import Client

    from steps.names import PIPELINE_NAME, Artifact

    runs = []
    for run in Client().list_pipeline_runs(pipeline_name=PIPELINE_NAME, sort_by="asc:created", size=100):
        steps, artifacts, values = [], {}, {}
        for name, step in run.steps.items():
            outputs = {out: versions[0] for out, versions in step.outputs.items()}
            steps.append({
                "name": name,
                "status": step.status.value,
                "metadata": dict(step.run_metadata),
                "inputs": {k: str(v[0].id) for k, v in step.inputs.items()},
                "outputs": {k: str(v.id) for k, v in outputs.items()},
            })
            for out, version in outputs.items():
                artifacts[out] = {"id": str(version.id), "version": str(version.version)}
                if out in (Artifact.DATA_PATH, Artifact.ADAPTER, Artifact.DEPLOYMENT, Artifact.AB_EVAL):
                    value = version.load()
                    values[out] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                if out == Artifact.AB_EVAL:
                    values["ab_eval_charts"] = sorted(values[out].pop("charts"))  # bytes: names only
                    values["ab_eval_visualizations"] = sorted(str(v.type) for v in version.visualizations or [])
                    values["ab_eval_metadata"] = dict(version.run_metadata)
        runs.append({"name": run.name, "status": run.status.value, "steps": steps, "artifacts": artifacts,
                     "values": values, "extra": dict(run.config.extra)})
    print(json.dumps(runs, default=str))


def _live_pid(state_dir: Path) -> int | None:
    from serving.records import load_record

    record = load_record(state_dir, "local")
    return record.pid if record else None


def _stop_local_server(state_dir: Path) -> None:
    from serving.local_deploy import stop_local

    stop_local(state_dir)


def test_resume_after_kill_loses_and_repeats_no_pair(chain):
    judge_dirs = list((chain["work"] / "judge").iterdir())
    assert len(judge_dirs) == 1, "the rerun must find the killed run's checkpoint folder, not start a new one"
    prefs = _read_jsonl(judge_dirs[0] / "preferences.jsonl")
    skipped = _read_jsonl(judge_dirs[0] / "preferences.skipped.jsonl")
    completions = _read_jsonl(next((chain["work"] / "generate").glob("*/completions.jsonl")))
    ids = [r["id"] for r in prefs + skipped]
    assert len(ids) == len(set(ids)), "a pair was written twice"
    assert set(ids) == {r["id"] for r in completions}, "a prompt was lost"
    assert len(completions) == LIMIT
    # The resumed judge step started from the pairs on disk and asked only for the rest.
    judge = next(s for s in chain["runs"][1]["steps"] if s["name"] == "judge_preferences")
    assert judge["status"] == "completed"
    assert judge["metadata"]["rows_done_before"] >= chain["killed_at_pairs"]
    assert judge["metadata"]["requests"] == LIMIT - judge["metadata"]["rows_done_before"]
    # Server side: each row judged once, plus at most the one request in flight when the run was killed.
    paid = chain["requests_after_resume"]
    assert LIMIT <= paid <= LIMIT + 1, f"{paid} judgments for {LIMIT} rows"


def test_smoke_run_succeeds_with_versioned_artifacts_and_lineage(chain):
    from steps.names import LINEAGE, OPTIONAL_ARTIFACTS, Artifact, Step

    run = chain["runs"][1]
    assert run["status"] == "completed"
    steps = {s["name"]: s for s in run["steps"]}
    assert set(steps) == {s.value for s in Step}
    assert steps["generate_completions"]["status"] == "cached"  # finished before the kill: not sampled again
    for name in set(Artifact) - OPTIONAL_ARTIFACTS:  # every artifact a plain run makes
        assert run["artifacts"][name]["version"], f"{name} has no version"
    # Lineage: each artifact in LINEAGE was an input of the step that made the next one.
    consumers = {}
    for step in run["steps"]:
        for input_id in step["inputs"].values():
            consumers.setdefault(input_id, set()).update(step["outputs"].values())
    for before, after in zip(LINEAGE, LINEAGE[1:], strict=False):
        assert run["artifacts"][after]["id"] in consumers.get(run["artifacts"][before]["id"], set()), (
            f"{after} is not made from {before}")
    assert run["artifacts"][Artifact.VAL_SET]["id"] in steps["upload_dataset"]["inputs"].values()
    # The adapter is recorded by reference (path + hash + metrics), and the deployment serves that path.
    adapter = run["values"][Artifact.ADAPTER]
    from training.adapters import adapter_sha256

    assert adapter_sha256(Path(adapter["path"])) == adapter["sha256"]
    assert adapter["steps"] == 4 and adapter["metrics"]["eval_loss"] is not None
    deployment = run["values"][Artifact.DEPLOYMENT]
    served = {a["name"]: a["path"] for a in deployment["adapters"]}
    assert served["seinfeld-dpo"] == adapter["path"]
    # The live vLLM says which folder it loaded "seinfeld-dpo" from: the trained adapter's.
    assert {a["name"]: a["root"] for a in deployment["adapters"]}["seinfeld-dpo"] == adapter["path"]
    assert deployment["adapters"][0]["sha256"] and "api_key" not in json.dumps(deployment)
    assert {"seinfeld", "seinfeld-dpo"} <= set(deployment["models"])
    # Metadata a dashboard reader wants, on each stage.
    assert steps["judge_preferences"]["metadata"]["tokens_in"] > 0
    assert "cost_usd" in steps["judge_preferences"]["metadata"]
    assert steps["train_adapter"]["metadata"]["steps"] == 4
    assert steps["split_dataset"]["metadata"]["n_train"] + steps["split_dataset"]["metadata"]["n_val"] >= 1
    assert "artifact deployment: version" in chain["resumed"].stdout
    # The A/B evaluation on the val split: a result, its numbers as metadata, the report and charts to look at.
    ab = run["values"][Artifact.AB_EVAL]
    n_val = steps["split_dataset"]["metadata"]["n_val"]
    assert ab["data"]["pairs"] == n_val and ab["data"]["wins"] + ab["data"]["losses"] + ab["data"]["ties"] == n_val
    assert ab["data"]["judge_backend"] == "reference" and ab["data"]["win_rate"]["interval"] == "wilson"
    assert "win_rate.png" in run["values"]["ab_eval_charts"]
    # The run ends with the answer: the verdict on its own line near the end, the report's path, how to try it.
    tail = chain["resumed"].stdout.strip().splitlines()[-12:]
    assert any(f"on {n_val} held-out prompts" in line and "no gate" in line for line in tail), tail
    report = next(line.split(": ", 1)[1] for line in tail if line.strip().startswith("report: "))
    assert Path(report).read_text().startswith("#")
    assert any("chat --model seinfeld-dpo" in line for line in tail) and tail[-1].endswith("dashboard")
    assert "training_curves.png" in run["values"]["ab_eval_charts"]
    assert run["values"]["ab_eval_visualizations"].count("image") == len(run["values"]["ab_eval_charts"])
    assert "markdown" in run["values"]["ab_eval_visualizations"]
    assert run["values"]["ab_eval_metadata"]["n"] == n_val
    assert "win_rate_all" in steps["evaluate_adapters"]["metadata"]


def test_second_run_with_only_operational_settings_changed_is_served_from_cache(chain):
    from steps.names import Artifact

    first, second = chain["runs"][1], chain["runs"][2]
    assert second["status"] == "completed"
    # The run carried its own operations (they reached the steps), yet no cache key moved.
    ops = second["extra"]["operations"]
    assert ops["deploy_timeout_s"] == OTHER_TIMEOUT_S and ops["judge_run"]["concurrency"] == 3
    assert first["extra"]["operations"]["deploy_timeout_s"] != OTHER_TIMEOUT_S
    statuses = {s["name"]: s["status"] for s in second["steps"]}
    assert statuses.pop("promote_or_rollback") == "completed"  # the gate acts now, never from the cache
    assert set(statuses.values()) == {"cached"}, statuses  # upload and deploy too: all still in place
    made = {k: v for k, v in second["artifacts"].items() if k != Artifact.GATE_DECISION}
    assert made == {k: v for k, v in first["artifacts"].items() if k != Artifact.GATE_DECISION}, \
        "a cached run made new artifact versions"
    assert chain["live_pid_after_cached"] == first["values"]["deployment"]["pid"], "the live server was restarted"
    assert chain["requests_after_resume"] == chain["server"].stats(log=False)["by_kind"].get("judge", 0)


def test_a_stopped_server_is_redeployed_by_the_next_run(chain):
    first, third = chain["runs"][1], chain["runs"][3]
    statuses = {s["name"]: s["status"] for s in third["steps"]}
    assert statuses.pop("deploy_adapters") == "completed"  # its token changed: the server was gone
    assert statuses.pop("promote_or_rollback") == "completed"
    assert set(statuses.values()) == {"cached"}, statuses
    before, after = first["values"]["deployment"], third["values"]["deployment"]
    assert after["reused"] is False and after["pid"] != before["pid"]
    assert {a["name"]: a["root"] for a in after["adapters"]} == {a["name"]: a["root"] for a in before["adapters"]}
    assert chain["live_pid_after_redeployed"] == after["pid"]


def test_modal_profile_without_credentials_fails_fast_naming_them(tmp_path):
    env = _clean_env(tmp_path / "zenml")
    for key in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_OAUTH_REFRESH_TOKEN"):
        env.pop(key, None)
    env["HOME"] = str(tmp_path)
    env["MODAL_CONFIG_PATH"] = str(tmp_path / "no-modal.toml")
    started = time.monotonic()
    proc = subprocess.run(_cli("run", "--profile", "modal"), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    for name in ("SERVE_URL", "OPENAI_API_KEY", "Modal token", "modal token new"):
        assert name in proc.stderr
    assert "nothing was run or paid for" in proc.stderr
    assert not (tmp_path / "zenml" / "config.yaml").exists(), "ZenML was started before the checks"
    assert time.monotonic() - started < 60
