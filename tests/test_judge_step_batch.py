"""The judge step in batch mode under a real ZenML store: the pairs artifact and the batch ids as step metadata
(what a dashboard reader uses to find the batches at OpenAI). Runs in a subprocess with its own ZenML home."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest

from tests.helpers import ROOT
from testserver import AVOID_MARKER, PREFER_MARKER, start_server

N = 5


def run_pipeline(completions: str, workdir: str, judge_url: str) -> dict:
    """In the subprocess: one pipeline, the completions file -> judge_preferences in batch mode."""
    from pipelines.zenml_home import init_zenml

    init_zenml()
    from zenml.client import Client

    from tests.judge_step_pipeline import judge_only

    run = Client().get_pipeline_run(judge_only(completions, workdir, judge_url).id)
    step_run = run.steps["judge_preferences"]
    pairs = step_run.outputs["preferences"][0].load()
    return {"status": str(run.status), "metadata": dict(step_run.run_metadata), "pairs": pairs.rows,
            "pairs_path": str(pairs.path)}


@pytest.mark.e2e  # whole-process work (~10-25 s) moved to `make slow` to keep `make test` under 10 minutes
def test_judge_step_in_batch_mode_records_the_batch_ids_as_metadata(tmp_path):
    completions = tmp_path / "completions.jsonl"
    rows = [{"prompt": f"[JERRY] Scene {i}.", "completions": [f"good {i} {PREFER_MARKER}", f"bad {i} {AVOID_MARKER}"]}
            for i in range(N)]
    completions.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with start_server() as server:
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zen"), "OPENAI_API_KEY": "sk-test-step-batch",
               "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
        code = ("import json\nfrom tests.test_judge_step_batch import run_pipeline\n"
                f"print('RESULT ' + json.dumps(run_pipeline({str(completions)!r}, {str(tmp_path / 'work')!r}, "
                f"{server.url!r}), default=str))\n")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        stats = server.stats(log=False)
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    meta = result["metadata"]
    assert result["status"].endswith("completed") and result["pairs"] == N
    assert meta["judge_mode"] == "batch" and meta["rows_succeeded"] == N and meta["pairs"] == N
    assert len(meta["batch_ids"]) == stats["batch"]["batches_created"] == 1
    assert meta["batch_input_file_ids"] and meta["batches"][next(iter(meta["batches"]))]["status"] == "completed"
    assert not list(scratch.glob("view-*")), "the step's view folder was left behind"  # stored by ZenML, then gone
    assert "sk-test-step-batch" not in done.stdout + done.stderr + json.dumps(meta)
