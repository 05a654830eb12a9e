"""The serving app's replica bounds: from the config, through the deploy, into the Modal app definition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.config import PipelineConfigError, load_config
from serving.scale import SCALE_VAR, ServeScale
from targets import operations_of
from targets.spec import Operations

ROOT = Path(__file__).resolve().parent.parent

# Imports serving/modal_app.py with Modal's decorators recording what the app passes them, as `modal deploy`
# evaluates it: the values the deployed function gets, read from the definition itself.
PROBE = """
import json, modal
seen = {}
real_function, real_concurrent = modal.App.function, modal.concurrent
def function(self, *args, **kwargs):
    seen.setdefault("function", []).append({k: kwargs.get(k) for k in
        ("min_containers", "max_containers", "scaledown_window") if k in kwargs})
    return real_function(self, *args, **kwargs)
def concurrent(**kwargs):
    seen["concurrent"] = kwargs
    return real_concurrent(**kwargs)
modal.App.function, modal.concurrent = function, concurrent
import serving.modal_app as app
seen["image_env"] = app.NAMES_ENV["NGPT_SERVE_SCALE"]
seen["adapters"] = app.ADAPTERS
seen["served_env"] = app.NAMES_ENV["NGPT_SERVED_ADAPTERS"]
print(json.dumps(seen))
"""


def _definition(scale: ServeScale, served: dict[str, str] | None = None) -> dict:
    env = {**os.environ, SCALE_VAR: scale.to_env(), "PYTHONPATH": str(ROOT),
           "NGPT_SERVED_ADAPTERS": json.dumps(served or {})}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_app_definition_takes_its_replica_bounds_from_the_scale_it_is_deployed_with():
    scale = ServeScale(min_containers=1, max_containers=2, sample_max_containers=12, max_inputs=40,
                       target_inputs=30, scaledown_window_s=300)
    served = {"seinfeld": "/vol/adapters/nothing-gpt/s", "seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/d",
              "seinfeld-dpo-ipo": "/vol/adapters/nothing-gpt-dpo/i"}  # a third adapter: any name the deploy passes
    seen = _definition(scale, served)
    assert seen["adapters"] == served  # vLLM's max_loras follows the count (test_modal_rounds.py)
    assert json.loads(seen["served_env"]) == served  # the containers load the same ones
    serve = seen["function"][0]  # `serve`, the vLLM web server (the first function the module defines)
    assert serve == {"min_containers": 1, "max_containers": 2, "scaledown_window": 300}
    assert seen["concurrent"] == {"max_inputs": 40, "target_inputs": 30}
    assert ServeScale.from_env({SCALE_VAR: seen["image_env"]}) == scale  # the containers evaluate the same


def test_the_shipped_modal_config_sets_the_bounds_and_sampling_concurrency_follows_them(tmp_path):
    cfg = load_config(profile="modal", env={})
    shipped = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())["deploy"]["scale"]
    assert cfg.deploy.scale == ServeScale(**shipped)
    assert cfg.generate_run.concurrency == cfg.deploy.scale.sample_max_containers * cfg.deploy.scale.target_inputs
    ops = operations_of(cfg)
    assert Operations.from_extra(json.loads(json.dumps(ops.to_extra()))) == ops  # through ZenML's extra
    # The A/B samples from the deployed bound: one replica's max_inputs, not sampling's hundreds.
    assert ops.ab_sampling().concurrency == cfg.deploy.scale.max_containers * cfg.deploy.scale.max_inputs

    raw = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())
    raw["generate"]["concurrency"] = 7
    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(config_file=path, env={}).generate_run.concurrency == 7  # set: kept


@pytest.mark.parametrize(("scale", "words"), [
    ({"max_containers": 0}, "max_containers must be >= 1"),
    ({"target_inputs": 80, "max_inputs": 64}, "target_inputs (80) must be <= max_inputs (64)"),
    ({"max_containers": 4, "sample_max_containers": 2}, "sample_max_containers (2) must be >= max_containers (4)"),
    ({"min_containers": 2, "max_containers": 1}, "min_containers (2) must be <= max_containers (1)"),
    ({"max_replicas": 3}, "max_replicas"),
    ({"max_inputs": "many"}, "max_inputs"),
])
def test_a_bad_scale_is_a_config_error_naming_the_key(tmp_path, scale, words):
    raw = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())
    raw["deploy"]["scale"] = {**raw["deploy"]["scale"], **scale}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineConfigError) as err:
        load_config(config_file=path, env={})
    assert words in str(err.value) and "deploy.scale" in str(err.value)
