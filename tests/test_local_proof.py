"""The product's claim, end to end on a real model: DPO on the project's preference data beats SFT on prompts it
never saw. `make run`'s pipeline, as shipped (configs/local.yaml: SmolLM2-135M-Instruct from the wheel, the
local vLLM, the rubric judge, CPU DPO, the A/B gate on), in a fresh ZenML store and working folder.

Opt-in (`-m realmodel`, `make proof`; `.ci/run` runs it): ~10 min on 2 cores without native bf16 (22 before the local
server was sized to its adapters, issue 28). It fails when
DPO stops helping: a swapped chosen/rejected anywhere in the chain, a resume that trains from the SFT weights, a
served adapter that is not the trained one all turn the result below the gate (measured with a deliberate swap in
training/data.py: 14 wins, 28 losses, interval [23.1%, 49.4%]). Measured on 83 held-out scenes, 2026-12-04:
56 wins, 19 losses, 8 ties, 72.3% [61.8%, 80.8%]. What is asserted is what held on both CPUs measured (the
samples are seeded, so they are fixed per CPU kind, and differ between bf16 and fp32 serving): the gate (lower
end >= evaluate.min_win_rate, 0.4) and wins > 1.5 x losses; the issue's 50% lower end is reported, not asserted
(docs/local-profile.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.realmodel, pytest.mark.slow, pytest.mark.timeout(1800)]


def _stop_server(state_dir: Path) -> None:
    from serving.local_deploy import stop_local

    stop_local(state_dir)


def test_dpo_beats_sft_on_held_out_prompts_with_the_real_model(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    config["workdir"] = str(tmp_path / "work")
    config["deploy"]["state_dir"] = str(tmp_path / "serving")
    config_file = tmp_path / "local.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("SERVE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["ZENML_CONFIG_PATH"] = str(tmp_path / "zenml")
    try:
        proc = subprocess.run([sys.executable, "-m", "pipelines.dpo", "run", "--config", str(config_file)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        _stop_server(tmp_path / "serving")
    results = list((tmp_path / "work" / "evaluate").glob("*/result.json"))
    assert len(results) == 1, f"no A/B result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(results[0].read_text())
    scenes = [line for line in (ROOT / config["prompts"]).read_text().splitlines() if line.strip()]
    rate = result["win_rate"]
    print(f"wins {result['wins']}, losses {result['losses']}, ties {result['ties']}: win rate "
          f"{rate['win_rate_all']:.3f}, 95% interval {rate['ci95_all']}")
    assert proc.returncode == 0, f"the run failed (the gate?):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert result["judged"] >= 0.3 * len(scenes)  # the hold-out (0.4 of the scenes by hash: 83), every prompt decided
    assert rate["ci95_all"][0] >= config["evaluate"]["min_win_rate"], result  # the gate passed (the exit code says so)
    assert result["wins"] > 1.5 * result["losses"], result  # DPO beats SFT (measured: 56 to 19, and 29 to 16 on
    # 47 scenes with bf16 serving; swapped: 14 to 28)
