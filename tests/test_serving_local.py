"""The local server is vLLM itself (CPU build), started from the Modal app's command builder.

The session's `local_vllm` serves the tiny kit's SFT adapter as "seinfeld" and an adapter `train_dpo` just
trained on the 4-bit path as "seinfeld-dpo". The lifecycle test starts servers of its own (deploy, reuse,
redeploy, failed deploys that keep the previous server, stop).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest

from serving.local_vllm import _group_alive

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234
MESSAGES = [
    {"role": "system", "content": "You write scenes for Seinfeld."},
    {"role": "user", "content": "Jerry and Kramer argue about a parking space."},
]

pytestmark = pytest.mark.slow


@pytest.fixture
def client(local_vllm):
    return openai.OpenAI(base_url=local_vllm.base_url, api_key=local_vllm.api_key, max_retries=0, timeout=120)


def token_logprobs(client, model: str, seed: int = SEED) -> list[tuple[str, float]]:
    response = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0.0,
                                              seed=seed, logprobs=True)
    return [(t.token, t.logprob) for t in response.choices[0].logprobs.content]


def test_models_list_each_adapter_with_its_parent_and_folder(client, local_vllm, tiny_kit, trained_dpo):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"tiny-base", "seinfeld", "seinfeld-dpo"}
    assert cards["seinfeld"].parent == cards["seinfeld-dpo"].parent == "tiny-base"
    # vLLM's `root` is the folder it loaded: the trained adapter is what "seinfeld-dpo" serves.
    assert cards["seinfeld-dpo"].root == str(trained_dpo.adapter_dir)
    assert cards["seinfeld"].root == str(tiny_kit.sft_adapter_dir)
    assert local_vllm.readiness.roots["seinfeld-dpo"] == str(trained_dpo.adapter_dir)


def test_the_served_dpo_adapter_is_not_the_sft_one(client):
    """Same prompt, same seed, greedy: the trained adapter changes the token log-probabilities."""
    sft, dpo = token_logprobs(client, "seinfeld"), token_logprobs(client, "seinfeld-dpo")
    assert token_logprobs(client, "seinfeld") == sft  # the comparison is not noise
    assert sft and dpo
    assert max(abs(a[1] - b[1]) for a, b in zip(sft, dpo, strict=False)) > 1e-3, (sft, dpo)


def test_every_route_wants_the_api_key(local_vllm):
    anonymous = openai.OpenAI(base_url=local_vllm.base_url, api_key="wrong-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    with urllib.request.urlopen(f"{local_vllm.url}/health", timeout=10) as response:  # open, for probes
        assert response.status == 200


def test_seeded_samples_n3_are_reproducible_and_distinct(client):
    def sample(seed: int) -> list[str]:
        r = client.chat.completions.create(model="seinfeld", messages=MESSAGES, n=3, temperature=0.9,
                                           max_tokens=12, seed=seed)
        return [c.message.content for c in r.choices]

    first = sample(SEED)
    assert len(first) == 3 and len(set(first)) == 3
    assert sample(SEED) == first
    assert sample(SEED + 1) != first


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="seinfeld-ppo", messages=MESSAGES, max_tokens=4)


async def test_generate_stage_samples_three_per_prompt(local_vllm, tmp_path):
    """The generate stage's engine against the real server: n=3 per prompt, every prompt done."""
    from engine.options import RunOptions
    from stages.generate import GenerateSettings, run_generate

    prompts = tmp_path / "prompts.jsonl"
    lines = (ROOT / "data" / "sample" / "prompts.jsonl").read_text().splitlines()[:5]
    prompts.write_text("\n".join(lines) + "\n")
    settings = GenerateSettings(serve_url=local_vllm.base_url, model="seinfeld", n=3, max_tokens=16, seed=0)
    summary = await run_generate(prompts, tmp_path / "out", settings, RunOptions(concurrency=4, progress=False),
                                 api_key=local_vllm.api_key)
    rows = [json.loads(line) for line in summary.output.read_text().splitlines()]
    assert len(rows) == 5 and all(len(r["completions"]) == 3 for r in rows)


def test_deploy_redeploy_reuse_and_stop_one_lifecycle(tiny_kit, trained_dpo, tmp_path, monkeypatch):
    from serving.errors import DeployError
    from serving.local_deploy import deploy_local, live_local
    from serving.records import load_record

    state = tmp_path / "state"
    sft = {"seinfeld": tiny_kit.sft_adapter_dir}
    both = {**sft, "seinfeld-dpo": trained_dpo.adapter_dir}
    first = deploy_local(tiny_kit.base_dir, sft, state_dir=state, timeout_s=300)
    pids = [first.pid]
    try:
        assert [a.name for a in first.adapters] == ["seinfeld"]
        assert live_local(state, sft) == first  # still answering with the same files: reused
        assert live_local(state, both) is None  # not serving the DPO adapter yet
        assert (state / "local_server.json").stat().st_mode & 0o077 == 0  # the key file is private
        assert "api_key" not in json.dumps(first.to_dict())  # never in the record (a ZenML artifact)

        second = deploy_local(tiny_kit.base_dir, both, state_dir=state, timeout_s=300)
        pids.append(second.pid)
        assert not _group_alive(first.pid), "the old server (and its engine process) was not stopped"
        dpo = {a.name: a for a in second.adapters}["seinfeld-dpo"]
        assert dpo.root == dpo.path == str(trained_dpo.adapter_dir)
        assert dpo.sha256 == "sha256:" + trained_dpo.adapter_sha256
        assert load_record(state, "local") == second

        with pytest.raises(DeployError) as err:  # a missing adapter fails before anything is stopped
            deploy_local(tiny_kit.base_dir, {"seinfeld-dpo": tmp_path / "absent"}, state_dir=state)
        assert err.value.part == "adapter missing"
        assert _group_alive(second.pid) and load_record(state, "local") == second

        # A server that cannot start (it exits at once, as vLLM does on a broken base, without vLLM's ~20 s of
        # imports first): the old one keeps serving.
        import serving.local_vllm as local_vllm

        real_command = local_vllm.build_vllm_command
        monkeypatch.setattr(local_vllm, "build_vllm_command", lambda *a, **k: [
            sys.executable, "-c", "import sys; print('ValueError: no model in broken-base'); sys.exit(3)"])
        (tmp_path / "broken-base").mkdir()
        with pytest.raises(DeployError) as err:
            deploy_local(tmp_path / "broken-base", sft, state_dir=state, timeout_s=120)
        monkeypatch.setattr(local_vllm, "build_vllm_command", real_command)
        assert err.value.part == "startup"
        assert "exited with code 3" in err.value.detail and "no model in broken-base" in err.value.detail
        assert _group_alive(second.pid) and load_record(state, "local") == second
        assert live_local(state, both) == second

        stop = subprocess.run([sys.executable, "-m", "pipelines.dpo", "deploy", "--local", "--stop",
                               "--state-dir", str(state)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert stop.returncode == 0, stop.stderr
        assert "stopped the local server" in stop.stdout
        assert not _group_alive(second.pid)
        assert load_record(state, "local") is None and not (state / "local_server.json").exists()
    finally:
        from serving.local_vllm import stop_pid

        for pid in pids:
            stop_pid(pid)


def test_both_adapters_answer_concurrently_over_async_openai(local_vllm):
    """The AsyncOpenAI path the stages use, both names in flight at once (--max-loras 2)."""

    async def both() -> list[str]:
        async with openai.AsyncOpenAI(base_url=local_vllm.base_url, api_key=local_vllm.api_key,
                                      max_retries=0) as aclient:
            rs = await asyncio.gather(*(aclient.chat.completions.create(
                model=m, messages=MESSAGES, max_tokens=4, temperature=0.0) for m in ("seinfeld", "seinfeld-dpo")))
        return [r.model for r in rs]

    assert asyncio.run(both()) == ["seinfeld", "seinfeld-dpo"]


def test_32_seeded_requests_in_flight_complete(local_vllm):
    """More prompt tokens in flight than vLLM's default step holds (2048): with chunked prefill a seeded request
    split across steps killed the CPU engine ("CPU Generator does not use offset"; every request after it failed).
    The local server schedules whole prompts only."""
    scene = " ".join(f"[JERRY] Line {i} about the soup, the puffy shirt and the parking space." for i in range(40))

    async def flight() -> list[int]:
        async with openai.AsyncOpenAI(base_url=local_vllm.base_url, api_key=local_vllm.api_key,
                                      max_retries=0, timeout=300) as aclient:
            rs = await asyncio.gather(*(aclient.chat.completions.create(
                model=("seinfeld", "seinfeld-dpo")[i % 2], messages=[{"role": "user", "content": f"{scene} {i}"}],
                n=3, seed=i, temperature=0.9, max_tokens=8) for i in range(32)))
        assert sum(r.usage.prompt_tokens for r in rs) * 3 > 2048  # the old step would have split prefills
        return [len(r.choices) for r in rs]

    assert asyncio.run(flight()) == [3] * 32
    client = openai.OpenAI(base_url=local_vllm.base_url, api_key=local_vllm.api_key, max_retries=0, timeout=60)
    assert {m.id for m in client.models.list().data} >= {"seinfeld", "seinfeld-dpo"}  # the engine lives on


@pytest.mark.realmodel
def test_wrapping_only_the_adapters_modules_serves_the_same_log_probs(monkeypatch, tmp_path):
    """SmolLM2's SFT adapter trains the top 8 of 30 layers: the local server wraps just those (and at its rank).
    At temperature 0 its token log-probs equal those of a server wrapping every module at rank 32, and differ from
    the base model's: the adapter is applied in full, nothing of it ignored."""
    import dataclasses

    from serving import local_vllm
    from training.smol import ensure_smol_kit

    kit = ensure_smol_kit()
    adapters = {"seinfeld": kit.sft_adapter_dir}
    messages = [{"role": "user", "content": "Write a short Seinfeld scene: Jerry and George at the coffee shop."}]

    def logprobs(server, model: str) -> list[float]:
        client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0, timeout=300)
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0.0,
                                           seed=0, logprobs=True)
        return [t.logprob for t in r.choices[0].logprobs.content]

    with local_vllm.start_local_vllm(kit.base_dir, adapters, served_model_name="base", timeout_s=600) as server:
        assert server.readiness is not None
        restricted, base = logprobs(server, "seinfeld"), logprobs(server, "base")
    narrow = local_vllm.local_settings(kit.base_dir, port=1, adapters=adapters)
    assert narrow.max_lora_rank == 16 and narrow.lora_target_modules is not None
    assert len(narrow.lora_target_modules) == 8 * 4  # qkv, o, gate_up, down in layers 22-29
    unrestricted = local_vllm.local_settings
    monkeypatch.setattr(local_vllm, "local_settings", lambda *a, **kw: dataclasses.replace(
        unrestricted(*a, **kw), lora_target_modules=None, max_lora_rank=32))
    with local_vllm.start_local_vllm(kit.base_dir, adapters, served_model_name="base", timeout_s=600) as server:
        wide = logprobs(server, "seinfeld")
    assert len(restricted) == len(wide) == 24
    assert max(abs(a - b) for a, b in zip(restricted, wide, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(restricted, base, strict=False)) > 1e-2


def test_deploy_local_restarts_what_the_last_local_deployment_served_else_the_kit(tmp_path, monkeypatch):
    """`deploy --local` / `serve-local` with no --base/--adapter: the base and adapters `make run` left serving
    (SmolLM2, seinfeld, seinfeld-dpo), while their files are there; else the chosen kit (SmolLM2 by default)."""
    import argparse
    import types

    from serving import cli
    from serving.records import make_record, write_record

    base, sft, dpo = (tmp_path / n for n in ("base", "sft", "dpo"))
    for folder in (base, sft, dpo):
        folder.mkdir()
    state = tmp_path / "state"
    from datetime import UTC, datetime

    ready = types.SimpleNamespace(models={"seinfeld": str(base), "seinfeld-dpo": str(base)}, roots={}, answers={})
    write_record(state, make_record("local", "http://127.0.0.1:9", str(base), ready, datetime.now(UTC),
                                    {"seinfeld": (str(sft), "sha256:a"), "seinfeld-dpo": (str(dpo), "sha256:b")}))
    args = argparse.Namespace(base=None, adapter=[], kit="smollm2", state_dir=state)
    assert cli._local_defaults(args) == (base, {"seinfeld": sft, "seinfeld-dpo": dpo})

    kits = []
    kit = types.SimpleNamespace(base_dir=tmp_path / "kb", sft_adapter_dir=tmp_path / "ks")
    monkeypatch.setattr("training.local_kit.ensure_local_kit", lambda key: kits.append(key) or kit)
    dpo.rmdir()  # the run's adapter is gone: the record is not trusted
    assert cli._local_defaults(args) == (tmp_path / "kb", {"seinfeld": tmp_path / "ks"})
    assert kits and kits[0].startswith("smollm2-kit:")
