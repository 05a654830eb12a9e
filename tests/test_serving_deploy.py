"""The readiness check and the Modal deploy, against a small vLLM-like server this test controls.

Modal itself is faked at the module boundary only: `serving.modal_deploy._deploy_modal_app` (the function
that runs `app.deploy()`) is replaced; everything after it (readiness over HTTP, records) is real.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from serving import modal_deploy as deploy
from serving.errors import DeployError
from serving.modal_deploy import ModalDeployment, deploy_modal
from serving.readiness import ReadinessOptions, check_ready, wait_until_ready
from serving.records import DeployRecord, load_record
from serving.scale import SCALE_VAR, ServeScale

BASE = "meta-llama/Llama-3.2-3B-Instruct"
KEY = "test-serve-key"
FAST = ReadinessOptions(timeout_s=3.0, request_timeout_s=2.0, first_delay_s=0.02, max_delay_s=0.1)


@dataclass
class FakeVllm:
    """A vLLM look-alike: which models it lists, from which poll on, and which ones fail to chat."""

    adapters: list[str] = field(default_factory=lambda: ["seinfeld", "seinfeld-dpo"])
    down_polls: int = 0  # the first polls get 503 (the server is still starting)
    late: dict[str, int] = field(default_factory=dict)  # adapter -> poll index from which it is listed
    never: set[str] = field(default_factory=set)  # adapters never listed
    failing: set[str] = field(default_factory=set)  # adapters whose chat requests get 500
    polls: int = 0
    chats: list[str] = field(default_factory=list)
    url: str = ""
    roots: dict[str, str] = field(default_factory=dict)  # adapter -> the folder it says it loaded
    old_roots: dict[str, str] = field(default_factory=dict)  # what an old warm container lists ...
    old_polls: int = 0  # ... for the first polls (a rolling deploy: the previous version answers first)
    api_key: str | None = None  # when set, /v1 wants `Authorization: Bearer <api_key>` (as vLLM's --api-key)
    unauthorized: int = 0

    def refused(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.unauthorized += 1
            return web.json_response({"error": "Unauthorized"}, status=401)
        return None

    async def models(self, request: web.Request) -> web.Response:
        if refused := self.refused(request):
            return refused
        self.polls += 1
        if self.polls <= self.down_polls:
            return web.json_response({"error": {"message": "starting"}}, status=503)
        cards = [{"id": BASE, "object": "model", "parent": None, "created": 0, "owned_by": "vllm"}]
        for name in self.adapters:
            if name not in self.never and self.polls >= self.late.get(name, 0):
                cards.append({"id": name, "object": "model", "parent": BASE, "created": 0, "owned_by": "vllm",
                              "root": self._root(name)})
        return web.json_response({"object": "list", "data": cards})

    def _root(self, name: str) -> str:
        if self.polls <= self.old_polls and name in self.old_roots:
            return self.old_roots[name]
        return self.roots.get(name, f"/vol/adapters/{name}")

    async def chat(self, request: web.Request) -> web.Response:
        if refused := self.refused(request):
            return refused
        body = await request.json()
        self.chats.append(body["model"])
        if body["model"] in self.failing:
            return web.json_response({"error": {"message": "LoRA load failed", "type": "server_error"}}, status=500)
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Hello from {body['model']}"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })


@pytest.fixture
def fake_vllm():
    """The fake server on its own thread and loop (sync deploy code blocks the test's thread)."""
    fake = FakeVllm()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app)
    started = threading.Event()

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert started.wait(5)
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


async def test_adapter_listed_late_is_waited_for(fake_vllm):
    fake_vllm.down_polls = 2
    fake_vllm.late = {"seinfeld-dpo": 5}
    ready = await wait_until_ready(fake_vllm.url + "/v1", ["seinfeld", "seinfeld-dpo"], FAST)
    assert fake_vllm.polls == 5  # two 503s, two polls without the DPO adapter, then success
    assert ready.models == {BASE: None, "seinfeld": BASE, "seinfeld-dpo": BASE}
    assert ready.answers == {"seinfeld": "Hello from seinfeld", "seinfeld-dpo": "Hello from seinfeld-dpo"}
    assert fake_vllm.chats == ["seinfeld", "seinfeld-dpo"]


async def test_adapter_never_listed_fails_within_the_bound(fake_vllm):
    fake_vllm.never = {"seinfeld-dpo"}
    bound = ReadinessOptions(timeout_s=1.5, first_delay_s=0.02, max_delay_s=0.1)
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        await wait_until_ready(fake_vllm.url + "/v1", ["seinfeld", "seinfeld-dpo"], bound)
    assert err.value.part == "adapter missing"
    assert "seinfeld-dpo" in str(err.value)
    assert bound.timeout_s <= time.monotonic() - start < bound.timeout_s + 1.0
    assert fake_vllm.polls > 5  # it kept polling until the bound
    assert fake_vllm.chats == []  # no request before every adapter is listed


async def test_failing_request_is_reported_as_request(fake_vllm):
    fake_vllm.failing = {"seinfeld-dpo"}
    with pytest.raises(DeployError) as err:
        await wait_until_ready(fake_vllm.url + "/v1", ["seinfeld", "seinfeld-dpo"], FAST)
    assert err.value.part == "request"
    assert "seinfeld-dpo" in str(err.value) and "500" in str(err.value)


def test_no_server_is_a_startup_failure_within_the_bound(unused_tcp_port):
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        check_ready(f"http://127.0.0.1:{unused_tcp_port}/v1", ["seinfeld"],
                    ReadinessOptions(timeout_s=1.0, first_delay_s=0.05, max_delay_s=0.2))
    assert err.value.part == "startup"
    assert time.monotonic() - start < 3.0


@pytest.fixture
def modal_logged_in(monkeypatch, tmp_path) -> list[str]:
    """A Modal token, the endpoint key, both adapter folders chosen, loadable on the volume; returns rollbacks."""
    import dataclasses

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("SERVE_API_KEY", KEY)
    monkeypatch.setattr(deploy, "NAMES", dataclasses.replace(
        deploy.NAMES, sft_adapter="/vol/adapters/seinfeld", dpo_adapter="/vol/adapters/seinfeld-dpo"))
    monkeypatch.setattr(deploy, "_check_volume_adapters", lambda adapters: dict.fromkeys(adapters))
    rollbacks: list[tuple[str, int]] = []
    monkeypatch.setattr(deploy, "rollback_modal_app", lambda app, version: rollbacks.append((app, version)))
    return rollbacks


def fake_deployment(fake: FakeVllm, **problems: str) -> ModalDeployment:
    adapters = {
        name: {"path": f"/vol/adapters/{name}", "problem": problems.get(name.replace("-", "_")),
               "rank": 32, "sha256": f"sha256:{name}"}
        for name in ("seinfeld", "seinfeld-dpo")
    }
    return ModalDeployment(url=fake.url, app_name="nothing-gpt-serve", base_model=BASE, adapters=adapters,
                           version=4, previous_version=3)  # v3 was live before this deploy


def test_modal_deploy_writes_a_record_of_what_is_live(fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    calls = []
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: calls.append(1) or
                        fake_deployment(fake_vllm))
    fake_vllm.late = {"seinfeld-dpo": 3}

    record = deploy_modal(state_dir=tmp_path, options=FAST)

    assert calls == [1]
    assert record.target == "modal" and record.url == fake_vllm.url and record.base_url == fake_vllm.url + "/v1"
    assert record.models == sorted([BASE, "seinfeld", "seinfeld-dpo"])
    assert [(a.name, a.parent, a.sha256) for a in record.adapters] == [
        ("seinfeld", BASE, "sha256:seinfeld"), ("seinfeld-dpo", BASE, "sha256:seinfeld-dpo")]
    assert record.ready_seconds > 0 and record.deployed_at.endswith("+00:00")
    assert (record.app_version, record.previous_app_version) == (4, 3)  # what a failed A/B gate rolls back to
    saved = json.loads((tmp_path / "modal_deployment.json").read_text())
    assert DeployRecord.from_dict(saved) == record == load_record(tmp_path, "modal")


def test_failed_deploy_keeps_the_previous_record(fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: fake_deployment(fake_vllm))
    first = deploy_modal(state_dir=tmp_path, options=FAST)
    before = (tmp_path / "modal_deployment.json").read_bytes()

    fake_vllm.failing = {"seinfeld"}
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path, options=FAST)
    assert err.value.part == "request"
    assert (tmp_path / "modal_deployment.json").read_bytes() == before
    assert load_record(tmp_path, "modal") == first
    assert [p.name for p in tmp_path.iterdir()] == ["modal_deployment.json"]  # no temp file left


def test_adapter_missing_on_the_volume_fails_without_waiting(fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    monkeypatch.setattr(deploy, "_deploy_modal_app",
                        lambda _, scale: fake_deployment(fake_vllm,
                                                         seinfeld_dpo="no adapter folder at /vol/adapters/x"))
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path, options=FAST)
    assert err.value.part == "adapter missing" and "no adapter folder" in str(err.value)
    assert fake_vllm.polls == 0
    fake_vllm.never = {"seinfeld-dpo"}  # as vLLM, which left it out
    # Serving only the SFT adapter (before the first DPO run) is a valid deploy.
    record = deploy_modal(state_dir=tmp_path, expected=["seinfeld"], options=FAST)
    assert [a.name for a in record.adapters] == ["seinfeld"]


def test_an_old_container_answering_first_does_not_roll_back_a_good_deploy(
        fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    """Issue 18.3: after a rolling `modal deploy` the previous version may answer the first polls; the check
    polls until the live roots are the new version's instead of rolling back on one look."""
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: fake_deployment(fake_vllm))
    fake_vllm.old_roots = {"seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/old-hash"}
    fake_vllm.old_polls = 3
    record = deploy_modal(state_dir=tmp_path, options=FAST)
    assert modal_logged_in == []  # no rollback
    assert fake_vllm.polls == 4  # three answers from the old version, then the new one
    assert {a.name: a.path for a in record.adapters}["seinfeld-dpo"] == "/vol/adapters/seinfeld-dpo"
    assert fake_vllm.chats == ["seinfeld", "seinfeld-dpo"]  # probed only once the new version answered


def test_a_deploy_whose_new_version_never_answers_is_rolled_back(fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: fake_deployment(fake_vllm))
    fake_vllm.old_roots = {"seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/old-hash"}
    fake_vllm.old_polls = 10**6
    bound = ReadinessOptions(timeout_s=1.0, first_delay_s=0.02, max_delay_s=0.1)
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path, options=bound)
    assert err.value.part == "adapter missing" and "old-hash" in str(err.value) and "Rolled" in str(err.value)
    assert modal_logged_in == [("nothing-gpt-serve", 3)] and fake_vllm.polls > 3 and fake_vllm.chats == []


def test_modal_errors_name_their_part(monkeypatch, tmp_path, modal_logged_in):
    from modal.exception import AuthError, ExecutionError

    def refuse(adapters, scale):
        raise AuthError("Token missing")

    monkeypatch.setattr(deploy, "_deploy_modal_app", refuse)
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path, options=FAST)
    assert err.value.part == "credentials" and "modal token new" in str(err.value)

    def broken(adapters, scale):
        raise ExecutionError("image build failed")

    monkeypatch.setattr(deploy, "_deploy_modal_app", broken)
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path, options=FAST)
    assert err.value.part == "deploy" and "image build failed" in str(err.value)


def test_a_stuck_deploy_is_bounded(monkeypatch, tmp_path, modal_logged_in):
    release = threading.Event()
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: release.wait(10))
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path, deploy_timeout_s=0.3, options=FAST)
    release.set()
    assert err.value.part == "deploy" and "did not finish within 0.3 s" in str(err.value)
    assert time.monotonic() - start < 1.5


async def test_check_ready_works_inside_a_running_loop(fake_vllm):
    ready = check_ready(fake_vllm.url + "/v1", ["seinfeld"], FAST)  # e.g. called from an async ZenML step
    assert ready.answers == {"seinfeld": "Hello from seinfeld"}


def test_without_credentials_deploy_fails_at_once(monkeypatch, tmp_path, capsys):
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE", "MODAL_OAUTH_REFRESH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: pytest.fail("Modal must not be called"))
    start = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy_modal(state_dir=tmp_path)
    assert err.value.part == "credentials" and "modal token new" in str(err.value)

    from pipelines.dpo import main

    assert main(["deploy", "--state-dir", str(tmp_path)]) == 1  # the CLI says so and exits 1
    assert time.monotonic() - start < 2.0
    assert not (tmp_path / "modal_deployment.json").exists()


def test_modal_deploy_sends_the_api_key(fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    fake_vllm.api_key = KEY  # as vLLM started with VLLM_API_KEY from the serve-key secret
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: fake_deployment(fake_vllm))
    record = deploy_modal(state_dir=tmp_path, options=FAST)
    assert fake_vllm.unauthorized == 0 and fake_vllm.chats == ["seinfeld", "seinfeld-dpo"]
    assert KEY not in (tmp_path / "modal_deployment.json").read_text()  # never in the record
    assert [a.root for a in record.adapters] == ["/vol/adapters/seinfeld", "/vol/adapters/seinfeld-dpo"]
    monkeypatch.delenv("SERVE_API_KEY")
    with pytest.raises(DeployError, match="SERVE_API_KEY is not set") as err:
        deploy_modal(state_dir=tmp_path, options=FAST)
    assert err.value.part == "credentials"


def test_the_deploy_serves_the_chosen_folders_and_checks_the_live_root(fake_vllm, monkeypatch, tmp_path,
                                                                       modal_logged_in):
    """The trained adapter's folder goes to the deploy; a server that loaded another folder is rolled back."""
    deployed = []
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: deployed.append(dict(adapters))
                        or fake_deployment(fake_vllm))
    fake_vllm.roots = {"seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/aaaa"}
    record = deploy_modal(state_dir=tmp_path, adapters={"seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/aaaa"},
                          options=FAST)
    assert deployed == [{"seinfeld": "/vol/adapters/seinfeld", "seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/aaaa"}]
    assert modal_logged_in == []
    before = (tmp_path / "modal_deployment.json").read_bytes()

    fake_vllm.roots = {"seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/aaaa"}  # still the old version's folder
    with pytest.raises(DeployError, match="Rolled nothing-gpt-serve back to its previous version v3") as err:
        deploy_modal(state_dir=tmp_path, adapters={"seinfeld-dpo": "/vol/adapters/nothing-gpt-dpo/bbbb"},
                     options=FAST)
    assert err.value.part == "adapter missing" and "bbbb" in str(err.value)
    assert modal_logged_in == [("nothing-gpt-serve", 3)]  # `modal app rollback nothing-gpt-serve v3` ran once
    assert (tmp_path / "modal_deployment.json").read_bytes() == before and record.adapters


def test_a_failed_first_deploy_says_there_is_nothing_to_roll_back(fake_vllm, monkeypatch, tmp_path, modal_logged_in):
    import dataclasses

    fake_vllm.failing = {"seinfeld"}
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: dataclasses.replace(
        fake_deployment(fake_vllm), previous_version=None))
    with pytest.raises(DeployError, match="first version: nothing to roll back"):
        deploy_modal(state_dir=tmp_path, options=FAST)
    assert modal_logged_in == []


def test_an_adapter_vllm_would_reject_stops_the_deploy_before_it_starts(monkeypatch, tmp_path, modal_logged_in):
    monkeypatch.setattr(deploy, "_check_volume_adapters",
                        lambda adapters: {"seinfeld": None, "seinfeld-dpo": "rank 64 exceeds the serving limit"})
    monkeypatch.setattr(deploy, "_deploy_modal_app", lambda adapters, scale: pytest.fail("deployed"))
    with pytest.raises(DeployError, match="rank 64.*Nothing was deployed; the running version stays"):
        deploy_modal(state_dir=tmp_path, options=FAST)


def test_the_deploy_reads_the_live_version_before_deploying_and_its_own_after(monkeypatch):
    """The rollback target is the version live before `modal deploy`, recorded by number; the deploy hands the
    configured replica bounds to `modal deploy` (the app module reads them at import)."""
    import subprocess
    import types

    import modal

    ran: list[list[str]] = []
    versions = [7]
    scales: list[str] = []
    served: list[dict] = []

    def fake_run(cmd, **kwargs):
        args = cmd[3:]  # after [python, -m, modal]
        ran.append(args[:2])
        if args[:1] == ["deploy"]:
            scales.append(kwargs["env"][SCALE_VAR])
            served.append(json.loads(kwargs["env"]["NGPT_SERVED_ADAPTERS"]))
        if args[:2] == ["app", "history"]:
            rows = [{"version": f"v{v}", "time_deployed": "t"} for v in sorted(versions, reverse=True)]
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(rows, indent=2), stderr="")
        versions.append(versions[-1] + 1)  # `modal deploy` makes a new version
        return subprocess.CompletedProcess(cmd, 0)

    function = types.SimpleNamespace(get_web_url=lambda: "https://x.modal.run", remote=lambda: {})
    monkeypatch.setattr(deploy.subprocess, "run", fake_run)
    monkeypatch.setattr(modal.App, "lookup", lambda name: object())
    monkeypatch.setattr(modal.Function, "from_name", lambda app, name: function)
    scale = ServeScale(max_containers=2, sample_max_containers=6)
    deployment = deploy._deploy_modal_app({"seinfeld": "/vol/adapters/nothing-gpt/s"}, scale)
    assert ran == [["app", "history"], ["deploy", "-m"], ["app", "history"]]
    assert [ServeScale.from_env({SCALE_VAR: s}) for s in scales] == [scale]
    assert served == [{"seinfeld": "/vol/adapters/nothing-gpt/s"}]  # what the app module loads (NGPT_SERVED_ADAPTERS)
    assert (deployment.previous_version, deployment.version) == (7, 8)
