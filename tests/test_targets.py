"""One target for local and Modal (targets/): the steps never ask which profile they run on, operational settings
reach them outside every cache key, and the gate is a decision the pipeline records, not an exception."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from engine.options import RunOptions
from steps.records import ABEval
from targets import open_target
from targets.local import LocalTarget
from targets.modal import ModalTarget
from targets.spec import Operations, TargetSpec, current_operations

ROOT = Path(__file__).resolve().parents[1]
PROFILE_WORDS = {"local", "modal"}


def _branches_on_profile(path: Path) -> list[str]:
    """Comparisons with "local"/"modal", or reads of `is_local`, in one file (line: source)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        compared = isinstance(node, ast.Compare) and any(
            isinstance(side, ast.Constant) and side.value in PROFILE_WORDS for side in [node.left, *node.comparators])
        if compared or (isinstance(node, ast.Attribute) and node.attr == "is_local"):
            found.append(f"{path.parent.name}/{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_step_and_not_the_pipeline_branch_on_the_profile():
    files = [*sorted((ROOT / "steps").glob("*.py")), ROOT / "pipelines" / "pipeline.py"]
    assert len(files) > 10
    assert [hit for path in files for hit in _branches_on_profile(path)] == []


def test_the_check_sees_a_branch_on_the_profile(tmp_path):
    probe = tmp_path / "branchy.py"
    probe.write_text('def f(target, cfg):\n    if target == "local":\n        return cfg.is_local\n')
    assert len(_branches_on_profile(probe)) == 2


def test_open_target_gives_each_profile_its_implementation(tmp_path):
    spec = TargetSpec(profile="local", model_key="tiny-kit:x", workdir=str(tmp_path), state_dir=str(tmp_path))
    assert isinstance(open_target(spec), LocalTarget)
    assert isinstance(open_target(dataclasses.replace(spec, profile="modal")), ModalTarget)
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="one of local, modal"):
        TargetSpec(profile="gcp", model_key="", workdir="", state_dir="")


def test_operations_travel_in_zenml_extra_and_come_back_whole():
    ops = Operations(generate_run=RunOptions(concurrency=24, progress=False), judge_run=RunOptions(max_attempts=2),
                     deploy_timeout_s=42.0, port=8123)
    extra = ops.to_extra()
    import json

    assert Operations.from_extra(json.loads(json.dumps(extra))) == ops  # plain JSON, as ZenML stores it
    assert Operations.from_extra({}) == Operations()  # a run that carried none: the defaults
    assert current_operations() == Operations()  # outside a step


def test_zenml_cache_keys_read_no_extra():
    """The rule the operations rely on: ZenML's cache key hashes parameters, inputs, environment and the like,
    never `extra` (zenml/orchestrators/cache_utils.py). Read from the installed ZenML's source (not imported: this
    process keeps ZenML out), so an upgrade that starts hashing `extra` fails here."""
    import importlib.util

    source = Path(importlib.util.find_spec("zenml").origin).parent / "orchestrators" / "cache_utils.py"
    tree = ast.parse(source.read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "generate_cache_key")
    code = ast.unparse(function)
    assert "step.config.parameters" in code and "step.config.environment" in code
    assert "extra" not in code


def test_the_pipeline_takes_the_sections_and_one_target_spec():
    tree = ast.parse((ROOT / "pipelines" / "pipeline.py").read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "dpo_pipeline")
    names = [a.arg for a in function.args.args]
    # the sections, whole and typed, one target spec and the two place tokens: nothing operational, nothing flattened
    assert names == ["target", "prompts", "generate", "judge", "split", "train", "evaluate", "evaluate_judge",
                     "round_inputs", "upload_token", "deploy_token"]


class _FakeTarget:
    def __init__(self, record: object | None) -> None:
        self.spec = TargetSpec(profile="local", model_key="k", workdir="/w", state_dir="/s")
        self.record, self.rolled_back = record, []

    def deployment(self):
        return self.record

    def rollback(self, rejected, ops):
        self.rolled_back.append((rejected, ops))
        return "the local server serves seinfeld-dpo from /old again"


def _ab(passed: bool, gate: bool = True) -> ABEval:
    data = {"challenger": "seinfeld-dpo",
            "gate": {"min_win_rate": 0.5, "lower_bound": 0.31, "passed": passed} if gate else None}
    return ABEval(data=data, markdown="", passed=passed)


def test_a_failed_gate_rolls_back_what_the_target_serves_and_says_so():
    from steps.evaluate import decide

    target, ops = _FakeTarget(record="the rejected deploy"), Operations(deploy_timeout_s=9.0)
    decision = decide(_ab(passed=False), target, ops)
    assert target.rolled_back == [("the rejected deploy", ops)]
    assert decision["action"] == "rolled_back" and decision["passed"] is False
    assert "0.310 is below evaluate.min_win_rate 0.500" in decision["message"] and "/old again" in decision["serving"]


@pytest.mark.parametrize("gate", [True, False])
def test_a_passed_gate_or_none_keeps_the_deploy(gate):
    from steps.evaluate import decide

    target = _FakeTarget(record="the new deploy")
    decision = decide(_ab(passed=True, gate=gate), target, Operations())
    assert decision["action"] == "kept" and target.rolled_back == []


def test_a_failed_gate_with_nothing_recorded_to_roll_back_fails_loudly():
    from steps.evaluate import decide

    with pytest.raises(RuntimeError, match="no local deployment recorded in /s"):
        decide(_ab(passed=False), _FakeTarget(record=None), Operations())


def test_rounds_read_the_gate_decision_artifact_not_the_run_name():
    import types

    from pipelines.rounds import gate_decision

    decision = {"passed": False, "action": "rolled_back", "serving": "x"}
    run = types.SimpleNamespace(name="anything", steps={"promote_or_rollback": types.SimpleNamespace(
        outputs={"gate_decision": [types.SimpleNamespace(load=lambda: decision)]})})
    assert gate_decision(run) == decision
    assert gate_decision(types.SimpleNamespace(name="dpo-local-round2-x", steps={})) == {}


def test_every_section_of_the_config_is_typed():
    from pipelines.config import PipelineConfig

    untyped = [f.name for f in dataclasses.fields(PipelineConfig) if str(f.type).strip() in ("Any", "typing.Any")]
    assert untyped == []
