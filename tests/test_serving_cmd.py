"""The vLLM command line, adapter checks, the Modal app module offline, and the Modal login check."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.adapters import VALID_LORA_RANKS, adapter_problem, hash_adapter_dir
from serving.vllm_cmd import API_SERVER_MODULE, VllmSettings, build_vllm_command, build_vllm_env

REPO = Path(__file__).resolve().parent.parent
BASE = "meta-llama/Llama-3.2-3B-Instruct"


def make_adapter(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    cfg = {"r": 32, "bias": "none", "target_modules": ["q_proj"], **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def lora_modules(cmd: list[str]) -> list[dict]:
    start = cmd.index("--lora-modules") + 1
    out = []
    for item in cmd[start:]:
        if item.startswith("--"):
            break
        out.append(json.loads(item))
    return out


def test_command_serves_both_adapters_as_json_modules(tmp_path):
    sft, dpo = make_adapter(tmp_path / "sft"), make_adapter(tmp_path / "dpo")
    cmd = build_vllm_command(VllmSettings(base_model=BASE), {"seinfeld": sft, "seinfeld-dpo": dpo})

    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    assert cmd[:3] == ["vllm", "serve", BASE]
    assert flag(cmd, "--served-model-name") == BASE
    assert flag(cmd, "--max-model-len") == "2048"
    assert flag(cmd, "--max-lora-rank") == "32"
    assert int(flag(cmd, "--max-loras")) >= 2
    assert flag(cmd, "--port") == "8000"
    assert "--enable-lora" in cmd
    assert lora_modules(cmd) == [
        {"name": "seinfeld", "path": str(sft), "base_model_name": BASE},
        {"name": "seinfeld-dpo", "path": str(dpo), "base_model_name": BASE},
    ]


def test_local_cpu_command_is_the_same_builder_with_cpu_settings(tmp_path):
    """The local server's command: the module entry point, the CPU flags, the rest as on Modal."""
    from serving.local_vllm import local_settings

    sft, dpo = make_adapter(tmp_path / "sft"), make_adapter(tmp_path / "dpo")
    adapters = {"seinfeld": sft, "seinfeld-dpo": dpo}
    settings = local_settings(tmp_path / "base", port=8123, served_model_name="tiny")
    cmd = build_vllm_command(settings, adapters, executable=sys.executable)
    modal = build_vllm_command(VllmSettings(base_model=str(tmp_path / "base"), served_model_name="tiny",
                                            host="127.0.0.1", port=8123), adapters)
    assert cmd[:5] == [sys.executable, "-m", API_SERVER_MODULE, "--model", str(tmp_path / "base")]
    assert flag(cmd, "--dtype") == "float32" and "--enforce-eager" in cmd
    assert flag(cmd, "--gpu-memory-utilization") == "0.3"
    assert int(flag(cmd, "--max-loras")) == 2 and lora_modules(cmd) == lora_modules(modal)
    for name in ("--served-model-name", "--host", "--port", "--max-model-len", "--max-lora-rank"):
        assert flag(cmd, name) == flag(modal, name), name
    env = build_vllm_env(settings, "s3cret")
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_API_KEY": "s3cret"}
    assert not any("s3cret" in arg for arg in cmd)  # the key is never on the command line (`ps` shows it)
    assert build_vllm_env(VllmSettings(base_model=BASE)) == {}  # on Modal: nothing extra


def test_missing_adapter_is_left_out_with_a_warning(tmp_path, caplog):
    sft = make_adapter(tmp_path / "sft")
    no_config = tmp_path / "half-uploaded"
    no_config.mkdir()
    adapters = {"seinfeld": sft, "seinfeld-dpo": tmp_path / "not-yet", "other": no_config}

    with caplog.at_level(logging.WARNING, logger="serving.vllm_cmd"):
        cmd = build_vllm_command(VllmSettings(base_model=BASE, max_loras=2), adapters)

    assert [m["name"] for m in lora_modules(cmd)] == ["seinfeld"]
    assert "seinfeld-dpo" in caplog.text and "no adapter folder" in caplog.text
    assert "other" in caplog.text and "adapter_config.json" in caplog.text
    assert flag(cmd, "--max-loras") == "2"


def test_no_adapter_at_all_still_gives_a_server(tmp_path):
    cmd = build_vllm_command(VllmSettings(base_model=BASE), {"seinfeld": tmp_path / "missing"})
    assert "--lora-modules" not in cmd
    assert "--enable-lora" in cmd and flag(cmd, "--max-loras") == "1"


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"r": 64}, "rank 64"),
        ({"bias": "all"}, "bias"),
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_adapters_vllm_would_reject_are_left_out(tmp_path, config, reason):
    bad = make_adapter(tmp_path / "bad", **config)
    assert reason in adapter_problem(bad, max_lora_rank=32)
    cmd = build_vllm_command(VllmSettings(base_model=BASE), {"seinfeld": bad})
    assert "--lora-modules" not in cmd


def test_max_loras_below_adapter_count_is_rejected(tmp_path):
    adapters = {"a": make_adapter(tmp_path / "a"), "b": make_adapter(tmp_path / "b")}
    with pytest.raises(ValueError, match="max_loras must be >= the number of adapters served"):
        build_vllm_command(VllmSettings(base_model=BASE, max_loras=1), adapters)


@pytest.mark.parametrize("rank", [0, 2, 24, 1024])
def test_invalid_max_lora_rank_is_rejected(rank):
    assert rank not in VALID_LORA_RANKS
    with pytest.raises(ValueError, match="max_lora_rank must be one of"):
        VllmSettings(base_model=BASE, max_lora_rank=rank)


def test_adapter_hash_follows_content(tmp_path):
    a = make_adapter(tmp_path / "a")
    before = hash_adapter_dir(a)
    assert before == hash_adapter_dir(a) and before.startswith("sha256:")
    (a / "adapter_model.safetensors").write_bytes(b"other weights")
    assert hash_adapter_dir(a) != before


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return env


def test_modal_app_imports_without_credentials(tmp_path):
    code = (
        "import json; from serving import modal_app as m; s = m.serve._spec_; "
        "print(json.dumps({'app': m.app.name, 'gpu': s.gpus, 'volumes': sorted(s.volumes), "
        "'secrets': len(s.secrets), 'cmd': __import__('serving.vllm_cmd').vllm_cmd.build_vllm_command("
        "m.SETTINGS, m.ADAPTERS)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(tmp_path), cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])

    from infra.names import NAMES

    assert info["app"] == NAMES.serve_app
    assert info["gpu"] == NAMES.gpu
    assert info["volumes"] == sorted([NAMES.mount, "/root/.cache/huggingface"])
    assert info["secrets"] == 2  # the HF token and the endpoint's API key
    # No adapter exists on this machine's /vol: the server command still builds, with none loaded.
    assert info["cmd"][:3] == ["vllm", "serve", NAMES.base_model]
    assert flag(info["cmd"], "--max-loras") == "1"  # follows the adapters served (none here; tests/test_modal_rounds)


def test_modal_credentials_detection(tmp_path):
    from infra.modal_credentials import modal_credentials_problem

    missing = modal_credentials_problem({"MODAL_CONFIG_PATH": str(tmp_path / "none.toml")})
    assert missing and "modal token new" in missing
    assert modal_credentials_problem({"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1",
                                      "MODAL_CONFIG_PATH": str(tmp_path / "none.toml")}) is None
    toml = tmp_path / "modal.toml"
    toml.write_text('[default]\ntoken_id = "ak-1"\n[work]\nactive = true\ntoken_id = "ak-2"\ntoken_secret = "as-2"\n')
    assert modal_credentials_problem({"MODAL_CONFIG_PATH": str(toml)}) is None  # the active profile
    assert "token secret" in modal_credentials_problem({"MODAL_CONFIG_PATH": str(toml), "MODAL_PROFILE": "default"})


def test_serving_and_training_hash_an_adapter_the_same_way(tmp_path):
    from training.adapters import adapter_sha256

    a = make_adapter(tmp_path / "a")
    assert hash_adapter_dir(a) == "sha256:" + adapter_sha256(a)
    (a / "training_metrics.json").write_text("{}")  # files beside the adapter do not change its identity
    assert hash_adapter_dir(a) == "sha256:" + adapter_sha256(a)


def test_the_local_server_serves_bf16_only_where_the_config_names_it_and_the_cpu_computes_it(tmp_path, monkeypatch):
    """SmolLM2's kit is stored in bf16 and served so on a CPU with native bf16 (27 against 20 tokens/s for fp32);
    on one without (an AVX2-only EPYC: bf16 emulated, 12 tokens/s) it is served in fp32, as are the tiny kit and a
    folder without a readable config (vLLM's own `auto` would cast fp32 down)."""
    import serving.local_vllm as local_vllm

    for cpu_bf16 in (True, False):
        monkeypatch.setattr(local_vllm, "cpu_has_bf16", lambda value=cpu_bf16: value)
        for name, config, expected in [("bf16", {"dtype": "bfloat16"}, "bfloat16"),
                                       ("old-key", {"torch_dtype": "bfloat16"}, "bfloat16"),
                                       ("fp32", {"dtype": "float32"}, "float32"), ("broken", None, "float32")]:
            folder = tmp_path / name
            folder.mkdir(exist_ok=True)
            (folder / "config.json").write_text("{" if config is None else json.dumps(config))
            assert local_vllm.local_settings(folder, port=1).dtype == (expected if cpu_bf16 else "float32"), name


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    from serving.local_vllm import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_bf16(info)
    info.write_text("flags\t\t: fpu avx2 amx_bf16\n")
    assert cpu_has_bf16(info)
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16x\n")  # a flag must match whole
    assert not cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")


def test_the_local_server_gives_both_cores_to_the_model_unless_told_otherwise(tmp_path):
    from serving.local_vllm import local_settings, server_env

    settings = local_settings(tmp_path / "base", port=1)
    env = server_env(settings, "k", environ={"PATH": "/bin"})
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"
    assert env["VLLM_API_KEY"] == "k"
    told = server_env(settings, "k", environ={"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"})
    assert told["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"


def test_the_local_server_runs_its_model_in_the_engine_process_with_tcmalloc_where_installed(tmp_path, monkeypatch):
    from serving import local_vllm

    settings = local_vllm.local_settings(tmp_path / "base", port=1)
    env = local_vllm.server_env(settings, "k", environ={"LD_PRELOAD": "/opt/other.so"})
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert local_vllm.server_env(settings, "k", environ={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})[
        "VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"  # a value already set wins
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    assert local_vllm.tcmalloc((str(tmp_path / "absent.so"), str(library))) == str(library)
    monkeypatch.setattr(local_vllm, "tcmalloc", lambda: str(library))
    env = local_vllm.server_env(settings, "k", environ={"LD_PRELOAD": "/opt/other.so"})
    assert env["LD_PRELOAD"].split() == [str(library), "/opt/other.so"]
    assert local_vllm.server_env(settings, "k", environ={})["LD_PRELOAD"] == str(library)
    monkeypatch.setattr(local_vllm, "tcmalloc", lambda: None)
    assert "LD_PRELOAD" not in local_vllm.server_env(settings, "k", environ={})


# The local server's LoRA footprint: the adapters' rank and exactly the modules they train (issue 28).


def _adapter(folder: Path, **config) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"], **config}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def _trained_modules(adapter_dir: Path) -> set[tuple[int, str]]:
    """(layer, PEFT module) of every LoRA weight in the adapter's safetensors file."""
    from safetensors import safe_open

    out = set()
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():  # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
            parts = key.split(".")
            layer = int(parts[parts.index("layers") + 1])
            out.add((layer, parts[parts.index("lora_A") - 1] if "lora_A" in parts else parts[-3]))
    return out


def test_every_weight_the_kit_adapters_hold_is_in_the_wrapped_modules(tiny_kit):
    from serving.adapters import PACKED_MODULES, lora_target_modules
    from serving.local_vllm import model_layers

    adapters = [tiny_kit.sft_adapter_dir, tiny_kit.dpo_adapter_dir]
    wrapped = set(lora_target_modules(adapters, model_layers(tiny_kit.base_dir)))
    trained = set().union(*(_trained_modules(a) for a in adapters))
    assert trained and {f"model.layers.{layer}.{PACKED_MODULES[m]}" for layer, m in trained} == wrapped


def test_the_footprint_follows_layers_to_transform_and_the_largest_rank(tmp_path):
    from serving.adapters import lora_rank_for, lora_target_modules

    top = _adapter(tmp_path / "a", target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[28, 29])
    one = _adapter(tmp_path / "b", target_modules=["gate_proj"], layers_to_transform=3)
    assert lora_target_modules([top, one], num_layers=30) == (
        "model.layers.28.mlp.down_proj", "model.layers.28.self_attn.qkv_proj",
        "model.layers.29.mlp.down_proj", "model.layers.29.self_attn.qkv_proj", "model.layers.3.mlp.gate_up_proj",
    )
    assert (lora_rank_for([16, 8]), lora_rank_for([9]), lora_rank_for([32])) == (16, 16, 32)


def test_the_local_rank_holds_a_rank_pattern_above_r(tmp_path):
    from serving.local_vllm import local_settings

    adapter = _adapter(tmp_path / "a", r=8, rank_pattern={"q_proj": 32})  # PEFT: q_proj trains at rank 32
    settings = local_settings(tmp_path / "base", port=1, adapters={"seinfeld": adapter})
    assert settings.max_lora_rank == 32
    assert "seinfeld" in str(build_vllm_command(settings, {"seinfeld": adapter}))  # served, not left out


@pytest.mark.parametrize(
    "config",
    [
        {"target_modules": "all-linear"},  # PEFT expands it at load: the names are not in the file
        {"target_modules": ".*proj"},  # a regex
        {"target_modules": ["q_proj", "lm_head"]},  # a module outside a layer
        {"target_modules": ["q_proj"], "layers_pattern": "h"},  # another architecture's layer names
    ],
)
def test_modules_that_cannot_be_named_exactly_mean_no_restriction(tmp_path, config):
    from serving.adapters import lora_target_modules

    assert lora_target_modules([_adapter(tmp_path / "a", **config)], num_layers=30) is None
    assert lora_target_modules([_adapter(tmp_path / "b")], num_layers=None) is None  # every layer, count unknown


def test_the_local_server_is_sized_to_its_adapters_and_never_splits_a_prefill(tiny_kit):
    from serving.local_vllm import local_settings

    adapters = {"seinfeld": tiny_kit.sft_adapter_dir, "missing": tiny_kit.root / "nowhere"}
    settings = local_settings(tiny_kit.base_dir, port=1, adapters=adapters)
    cmd = build_vllm_command(settings, adapters)
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"  # the kit's r, not Modal's 32
    assert "--no-enable-chunked-prefill" in cmd and int(cmd[cmd.index("--max-num-batched-tokens") + 1]) >= 2048
    after = cmd[cmd.index("--lora-target-modules") + 1:]
    modules = after[:next(i for i, arg in enumerate(after) if arg.startswith("--"))]
    assert modules == ["model.layers.0.self_attn.o_proj", "model.layers.0.self_attn.qkv_proj",
                       "model.layers.1.self_attn.o_proj", "model.layers.1.self_attn.qkv_proj"]
    assert local_settings(tiny_kit.base_dir, port=1).lora_target_modules is None  # no adapter: nothing to derive


def test_without_chunked_prefill_a_step_must_hold_a_whole_prompt():
    with pytest.raises(ValueError, match="max_num_batched_tokens must be >= max_model_len"):
        VllmSettings(base_model="b", chunked_prefill=False, max_num_batched_tokens=1024)


def test_the_base_alone_has_no_lora_at_all():
    cmd = build_vllm_command(VllmSettings(base_model=BASE, enable_lora=False), {})
    assert not any("lora" in arg for arg in cmd)
    with pytest.raises(ValueError, match="serves the base alone"):
        build_vllm_command(VllmSettings(base_model=BASE, enable_lora=False), {"seinfeld": "/x"})
