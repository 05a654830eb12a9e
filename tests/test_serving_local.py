"""The local OpenAI-compatible server end to end: a subprocess serving the tiny base with two adapters."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import openai
import pytest

from serving.local_process import _alive, start_local_server

SEED = 1234
MESSAGES = [
    {"role": "system", "content": "You write scenes for Seinfeld."},
    {"role": "user", "content": "Jerry and Kramer argue about a parking space."},
]


def perturbed_copy(adapter: Path, out: Path) -> Path:
    """A stand-in "DPO" adapter: the SFT adapter with its LoRA B weights moved by seeded noise."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter, out)
    weights = load_file(out / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(0)
    for name, tensor in weights.items():
        if "lora_B" in name:
            # 0.5: large next to the tiny SFT adapter's B (~0.005), so sampled tokens change visibly
            weights[name] = tensor + 0.5 * torch.randn(tensor.shape, generator=gen)
    save_file(weights, out / "adapter_model.safetensors")
    return out


@pytest.fixture(scope="module")
def adapters(tiny_kit, tmp_path_factory) -> dict[str, Path]:
    dpo = perturbed_copy(tiny_kit.sft_adapter_dir, tmp_path_factory.mktemp("dpo") / "adapter")
    return {"seinfeld": tiny_kit.sft_adapter_dir, "seinfeld-dpo": dpo}


@pytest.fixture(scope="module")
def server(tiny_kit, adapters):
    with start_local_server(tiny_kit.base_dir, adapters, served_model_name="tiny-base") as handle:
        yield handle
    assert handle.process.poll() is not None  # stopped on exit


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def sample(client, model: str, **kwargs) -> list[str]:
    params = {"n": 3, "temperature": 1.0, "max_tokens": 12, "seed": SEED, **kwargs}
    response = client.chat.completions.create(model=model, messages=MESSAGES, **params)
    assert [c.index for c in response.choices] == list(range(params["n"]))
    return [c.message.content for c in response.choices]


def test_models_list_the_adapters_with_their_parent(client, server):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"tiny-base", "seinfeld", "seinfeld-dpo"}
    assert cards["seinfeld"].parent == cards["seinfeld-dpo"].parent == "tiny-base"
    assert cards["tiny-base"].parent is None
    assert server.models == ["tiny-base", "seinfeld", "seinfeld-dpo"]


def test_seeded_samples_are_reproducible_distinct_and_differ_by_adapter(client):
    sft = sample(client, "seinfeld")
    assert len(sft) == 3 and all(isinstance(t, str) and t for t in sft)
    assert len(set(sft)) == 3  # n samples of one request differ from each other
    assert sample(client, "seinfeld") == sft  # same request, same seed: same three texts
    dpo = sample(client, "seinfeld-dpo")
    assert sample(client, "seinfeld-dpo") == dpo
    assert dpo != sft  # the adapter is applied per request
    assert sample(client, "seinfeld", seed=SEED + 1) != sft


def test_token_limits_and_greedy(client):
    response = client.chat.completions.create(model="seinfeld", messages=MESSAGES, n=2, max_tokens=4)
    assert response.usage.completion_tokens <= 2 * 4
    assert all(c.finish_reason in ("length", "stop") for c in response.choices)
    response = client.chat.completions.create(model="seinfeld", messages=MESSAGES, max_completion_tokens=3)
    assert response.usage.completion_tokens <= 3
    greedy = sample(client, "seinfeld-dpo", temperature=0.0, seed=None)
    assert len(set(greedy)) == 1  # no sampling: the same answer n times


def test_unknown_model_is_an_openai_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="seinfeld-ppo", messages=MESSAGES)
    assert err.value.status_code == 404
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="seinfeld", messages=MESSAGES, n=0)


async def test_concurrent_requests_as_the_generate_stage_sends_them(server):
    """AsyncOpenAI, several requests in flight: each gets its own adapter's seeded samples."""
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as aclient:

        async def one(model: str) -> list[str]:
            r = await aclient.chat.completions.create(model=model, messages=MESSAGES, n=3, temperature=1.0,
                                                      max_tokens=12, seed=SEED)
            return [c.message.content for c in r.choices]

        results = await asyncio.gather(*(one(m) for m in ["seinfeld", "seinfeld-dpo"] * 2))
    assert results[0] == results[2] and results[1] == results[3]
    assert results[0] != results[1]


def test_local_deploy_restarts_the_server_and_records_it(tiny_kit, adapters, tmp_path):
    from serving.deploy import deploy_local, load_record
    from serving.errors import DeployError

    state = tmp_path / "state"
    first = deploy_local(tiny_kit.base_dir, {"seinfeld": adapters["seinfeld"]}, state_dir=state, timeout_s=120)
    try:
        assert [a.name for a in first.adapters] == ["seinfeld"]
        second = deploy_local(tiny_kit.base_dir, adapters, state_dir=state, timeout_s=120)
        assert second.pid != first.pid and not _alive(first.pid)  # the old server was stopped
        assert _alive(second.pid)
        assert [(a.name, a.parent) for a in second.adapters] == [
            ("seinfeld", str(tiny_kit.base_dir)), ("seinfeld-dpo", str(tiny_kit.base_dir))]
        assert second.adapters[1].sha256 and second.adapters[1].sha256 != second.adapters[0].sha256
        assert load_record(state, "local") == second
        assert json.loads((state / "local_server.json").read_text())["pid"] == second.pid

        with pytest.raises(DeployError) as err:  # a missing adapter fails before anything is stopped
            deploy_local(tiny_kit.base_dir, {"seinfeld-dpo": tmp_path / "absent"}, state_dir=state)
        assert err.value.part == "adapter missing"
        assert _alive(second.pid) and load_record(state, "local") == second
    finally:
        from serving.local_process import stop_pid

        stop_pid(json.loads((state / "local_server.json").read_text())["pid"])
