"""Serve the Seinfeld SFT and DPO adapters side by side from one vLLM server on Modal (for A/B).

vLLM's OpenAI-compatible server runs the base model (Llama 3.2 3B Instruct) with LoRA enabled and
every adapter the deploy names loaded, each requested by its own model name, each from its content-addressed
folder ($NGPT_SERVED_ADAPTERS, JSON, set by the deploy step; by hand, $NGPT_SFT_ADAPTER and $NGPT_DPO_ADAPTER):

    seinfeld      -> /vol/adapters/nothing-gpt/<hash>      (put there by `upload --adapter`)
    seinfeld-dpo  -> /vol/adapters/nothing-gpt-dpo/<hash>  (written by training)
    seinfeld-dpo-prev -> the previous round's DPO adapter  (rounds, for their A/B)

The folders are part of the app version (the images' environment), so `modal app rollback` returns to the
adapters that version served, and vLLM's /v1/models `root` names the folder each adapter was loaded from.
Every /v1 route wants `Authorization: Bearer <SERVE_API_KEY>`; the key comes from the Modal secret
NAMES.serve_key_secret. An adapter missing from the volume is left out with a warning (the server still
comes up, e.g. before the first DPO run). Deploy and check it with `python -m pipelines.dpo deploy`; or
`modal deploy -m serving.modal_app`, then `modal run -m serving.modal_app` for a smoke test.
Every name (app, volumes, secrets, GPU, base model, adapter folders) comes from infra/names.py.
"""

from __future__ import annotations

import logging
import os
import subprocess

import modal

from infra.names import NAMES
from serving.adapters import describe_adapter
from serving.scale import SCALE_VAR, ServeScale
from serving.startup import STARTUP_TIMEOUT  # 20 min; modal-free: the preflight waits as long
from serving.vllm_cmd import VllmSettings, build_vllm_command, build_vllm_env

# ## Constants

MINUTES = 60  # seconds
VLLM_VERSION = "0.33.0"  # checked on PyPI (pip index versions vllm), November 2026
PYTHON_VERSION = "3.12"
VLLM_PORT = 8000
HF_CACHE = "/root/.cache/huggingface"  # where huggingface_hub looks by default: the cache volume goes here
API_KEY_VAR = "SERVE_API_KEY"  # the variable in the serve-key secret; the clients read the same one

# Served name -> adapter folder on the volume; one not chosen yet ("") is not served.
ADAPTERS = {name: path for name, path in NAMES.served_folders().items() if path}

SETTINGS = VllmSettings(
    base_model=NAMES.base_model,
    served_model_name=NAMES.base_model,  # the base answers to its hub id; it is each adapter's `parent`
    port=VLLM_PORT,
    max_model_len=2048,  # prompts are <= ~700 tokens, completions <= ~1,000: room for both
    max_lora_rank=32,  # our adapters are r=32; must be one of vLLM's allowed ranks
    max_loras=None,  # None: the number of adapters served (2, or 3 in a later round), all in one batch
    gpu_memory_utilization=0.90,  # 3B bf16 weights take ~6.5 GB of the L4's 24 GB; the rest is KV cache
    enforce_eager=False,  # keep CUDA graphs: slower cold start, much faster decoding of many samples
)

# The replica bounds (the config's deploy.scale, passed by the deploy as NGPT_SERVE_SCALE; serving/scale.py).
SCALE = ServeScale.from_env()

# The names this module was built with (NGPT_* overrides and the chosen adapter folders included), passed
# into the containers so they resolve the same ones: infra.names reads these variables there too.
NAMES_ENV = {**NAMES.env(), SCALE_VAR: SCALE.to_env()}

# ## Container images

# What each container holds: these packages (plus the Modal client Modal adds) and these local sources. The images
# are built from these names; tests/test_modal_containers.py checks every import the functions can reach against
# them (against the smaller tools image: both run this whole module), and `make rehearse` runs the start-up code
# and the adapter check in a replica.
VLLM_PACKAGES = (f"vllm=={VLLM_VERSION}",)  # vLLM pins its own torch/transformers for this release
TOOLS_PACKAGES: tuple[str, ...] = ()  # the adapter check reads JSON and hashes files: the standard library
SOURCES = ("infra", "serving")  # our code (names, command builder, adapter checks)

vllm_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .uv_pip_install(*VLLM_PACKAGES)
    .env({
        "HF_XET_HIGH_PERFORMANCE": "1",  # faster weight downloads on the first start
        "VLLM_CACHE_ROOT": f"{HF_CACHE}/vllm",  # torch.compile cache survives restarts on the cache volume
        **NAMES_ENV,
    })
    .add_local_python_source(*SOURCES)  # last: added at container start
)

# A small image for the adapter check: it needs only our code and the volume.
tools_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(*TOOLS_PACKAGES)
    .env(NAMES_ENV)
    .add_local_python_source(*SOURCES)
)

# ## Volumes and secrets

adapters_volume = modal.Volume.from_name(NAMES.volume, create_if_missing=True)  # adapters at /vol/adapters/*
hf_cache_volume = modal.Volume.from_name(NAMES.hf_cache_volume, create_if_missing=True)  # base model weights
hf_secret = modal.Secret.from_name(NAMES.hf_secret)  # HF_TOKEN: Llama 3.2 is a gated model
serve_key_secret = modal.Secret.from_name(NAMES.serve_key_secret)  # SERVE_API_KEY: the endpoint's bearer key

# ## The app

app = modal.App(NAMES.serve_app)


@app.function(
    image=vllm_image,
    gpu=NAMES.gpu,  # L4 (24 GB) by default: enough for a 3B model in bf16 plus two r=32 adapters
    volumes={NAMES.mount: adapters_volume, HF_CACHE: hf_cache_volume},
    secrets=[hf_secret, serve_key_secret],
    timeout=10 * MINUTES,  # longest a single request may run
    # The start-up limit Modal applies. Without it `timeout` bounds the start too: @modal.web_server's own
    # startup_timeout (below) alone does not lift it.
    startup_timeout=STARTUP_TIMEOUT,
    scaledown_window=SCALE.scaledown_window_s,  # how long to stay up with no requests (a cold start costs minutes)
    min_containers=SCALE.min_containers,  # 0 by default: no GPU is billed while nobody asks
    # The A/B's bound (1 by default: its traffic is small, and it bounds the bill). Sampling raises it to
    # SCALE.sample_max_containers with update_autoscaler; the next deploy returns it to this.
    max_containers=SCALE.max_containers,
)
# Requests one replica takes at once (vLLM batches them continuously); above target_inputs in flight per replica,
# Modal adds one.
@modal.concurrent(max_inputs=SCALE.max_inputs, target_inputs=SCALE.target_inputs)
@modal.web_server(port=VLLM_PORT, startup_timeout=STARTUP_TIMEOUT)  # how long port 8000 may take to answer
def serve() -> None:
    """Start vLLM's OpenAI-compatible server behind the API key; Modal routes traffic once port 8000 answers."""
    logging.basicConfig(level=logging.INFO)  # the container's log shows which adapters were left out
    api_key = os.environ.get(API_KEY_VAR)
    if not api_key:  # never open the GPU to anyone who has the URL
        raise RuntimeError(
            f"the secret {NAMES.serve_key_secret!r} holds no {API_KEY_VAR}: recreate it with "
            f"`modal secret create --force {NAMES.serve_key_secret} {API_KEY_VAR}=<key>`"
        )
    cmd = build_vllm_command(SETTINGS, ADAPTERS)
    logging.getLogger(__name__).info("starting: %s", cmd)  # no key in it: the key travels as VLLM_API_KEY
    subprocess.Popen(cmd, env={**os.environ, **build_vllm_env(SETTINGS, api_key)})  # an argument list: no shell


@app.function(image=tools_image, volumes={NAMES.mount: adapters_volume}, timeout=2 * MINUTES)
def describe_adapters() -> dict[str, dict]:
    """Each adapter as the server will see it: path, problem (None if loadable), rank, sha256 of its files."""
    return {name: describe_adapter(path, max_lora_rank=SETTINGS.max_lora_rank) for name, path in ADAPTERS.items()}


@app.local_entrypoint()
def smoke(timeout_minutes: int = 20) -> None:
    """`modal run -m serving.modal_app`: wait for the server, then one chat request per adapter ($SERVE_API_KEY)."""
    from serving.readiness import ReadinessOptions, check_ready

    url = serve.get_web_url()
    present = [name for name, info in describe_adapters.remote().items() if info["problem"] is None]
    options = ReadinessOptions(timeout_s=timeout_minutes * MINUTES, api_key=os.environ[API_KEY_VAR])
    ready = check_ready(f"{url}/v1", present, options)
    print(f"{url} ready in {ready.ready_seconds:.0f} s")
    for name, answer in ready.answers.items():
        print(f"{name}: {answer!r}")
