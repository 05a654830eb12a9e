"""Steps that write files to return them (select_prompts, split_dataset) leave no temporary folder behind,
and the artifacts ZenML stored from those files still load in a later step and from the store afterwards.

The pipeline runs in a subprocess with its own ZenML store and its own TMPDIR, so what is left there is
exactly what the run left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.rows import prompt_id
from tests.helpers import ROOT, write_prompts

PREFIXES = ("prompt-subset-", "split-")  # the steps' scratch folders


def _pairs(path: Path, n: int) -> None:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"[JERRY] Scene {i}."}]
        rows.append({"id": prompt_id(prompt), "prompt": prompt, "chosen": [{"role": "assistant", "content": "good"}],
                     "rejected": [{"role": "assistant", "content": f"bad {i}"}]})
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def run_pipeline(prompts: str, pairs: str) -> dict:
    """Run in the subprocess: select_prompts and split_dataset, then a step that reads all three outputs."""
    from pipelines.zenml_home import init_zenml

    init_zenml()
    from zenml.client import Client

    from tests.scratch_pipeline import scratch_pipeline

    run = Client().get_pipeline_run(scratch_pipeline(prompts, pairs).id)
    return {"status": str(run.status), "rows_seen": run.steps["rows_seen"].outputs["rows_seen"][0].load()}


@pytest.mark.e2e  # whole-process work (~10-25 s) moved to `make slow` to keep `make test` under 10 minutes
def test_steps_leave_no_temporary_folder_and_their_artifacts_still_load(tmp_path):
    prompts, pairs, tmp = tmp_path / "prompts.jsonl", tmp_path / "pairs.jsonl", tmp_path / "tmp"
    write_prompts(prompts, 8)
    _pairs(pairs, 12)
    tmp.mkdir()
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zen"), "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    code = (
        "import json, sys\n"
        "from tests.test_step_scratch import run_pipeline\n"
        f"print('RESULT ' + json.dumps(run_pipeline({str(prompts)!r}, {str(pairs)!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result == {"status": "completed", "rows_seen": 5 + 12}  # the later step read every stored file
    left = [p.name for p in tmp.iterdir() if p.name.startswith(PREFIXES)]
    assert left == [], left
