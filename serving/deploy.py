"""Redeploy the adapters and prove they are live: Modal (vLLM on a GPU) or the local vLLM (CPU build).

Both paths end with the same readiness check (serving/readiness.py) and return the same
DeployRecord, which is written atomically to `<state_dir>/<target>_deployment.json` only when
everything passed; on any failure a DeployError names the part and the previous record stays.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from infra.atomic import write_json  # noqa: F401 (records and stamps are written with it)
from infra.modal_credentials import LOGIN_HINT, modal_credentials_problem
from infra.names import NAMES
from serving.errors import DeployError
from serving.readiness import ReadinessOptions, check_ready

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("data/runs/serving")
DEFAULT_EXPECTED = (NAMES.sft_model_name, NAMES.dpo_model_name)
API_KEY_VAR = "SERVE_API_KEY"  # the Modal endpoint's bearer key on the client side (and in the serve-key secret)
REPO_ROOT = Path(__file__).resolve().parent.parent  # `modal deploy -m serving.modal_app` runs from here
# Served name -> the variable its folder travels in to the serving app (serving/modal_app.py `ADAPTERS`).
ADAPTER_ENV = {NAMES.sft_model_name: "NGPT_SFT_ADAPTER", NAMES.dpo_model_name: "NGPT_DPO_ADAPTER",
               NAMES.prev_model_name: "NGPT_PREV_ADAPTER"}


@dataclass(frozen=True)
class AdapterRecord:
    """One served adapter: its name, where it was loaded from, its parent, and a content hash if known."""

    name: str
    path: str
    parent: str | None
    sha256: str | None
    root: str | None = None  # the folder the live server says it loaded the adapter from (vLLM's `root`)


@dataclass(frozen=True)
class DeployRecord:
    """What is live after a successful deploy (JSON-serialisable with to_dict)."""

    target: str  # "modal" or "local"
    url: str  # root URL of the server
    base_url: str  # the OpenAI base URL (url + "/v1")
    base_model: str  # the name the base model is served under
    models: list[str]  # every model id /v1/models listed
    adapters: list[AdapterRecord]
    ready_seconds: float  # deploy start -> every adapter listed and answering
    deployed_at: str  # UTC, ISO 8601
    app_name: str | None = None  # Modal app
    app_version: int | None = None  # Modal: the app version this record describes (`modal app history`)
    previous_app_version: int | None = None  # Modal: the version live before this deploy, where a failed check
    # or A/B gate rolls back to (None: nothing to go back to, or a record that is itself a rollback)
    pid: int | None = None  # local server process
    answers: dict[str, str] = field(default_factory=dict)  # each adapter's probe answer (first 200 chars)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DeployRecord:
        adapters = [AdapterRecord(**a) for a in data.get("adapters", [])]
        return cls(**{**data, "adapters": adapters})


@dataclass(frozen=True)
class ModalDeployment:
    """What `_deploy_modal_app` learns from Modal."""

    url: str
    app_name: str
    base_model: str
    adapters: dict[str, dict]  # name -> serving.adapters.describe_adapter() output, seen on the volume
    version: int | None = None  # the app version this deploy made
    previous_version: int | None = None  # the version live before it (the rollback target); None: the first one


def record_path(state_dir: Path, target: str) -> Path:
    return Path(state_dir) / f"{target}_deployment.json"


def load_record(state_dir: Path, target: str) -> DeployRecord | None:
    """The last successful deploy's record, or None."""
    path = record_path(state_dir, target)
    if not path.is_file():
        return None
    return DeployRecord.from_dict(json.loads(path.read_text()))


def modal_adapters(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Served name -> adapter folder on the volume: NGPT_SFT_ADAPTER / NGPT_DPO_ADAPTER, then `overrides`."""
    chosen = {NAMES.sft_model_name: NAMES.sft_adapter, NAMES.dpo_model_name: NAMES.dpo_adapter, **(overrides or {})}
    return {name: str(path) for name, path in chosen.items() if path}


def deploy_modal(
    *,
    expected: Sequence[str] | None = None,
    adapters: Mapping[str, str] | None = None,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 1200.0,
    deploy_timeout_s: float = 1800.0,
    options: ReadinessOptions | None = None,
) -> DeployRecord:
    """Deploy the Modal serving app with `adapters`, wait until every `expected` adapter is listed and answers.

    `adapters` (name -> content-addressed folder on the volume) override NGPT_SFT_ADAPTER/NGPT_DPO_ADAPTER;
    `expected` defaults to every adapter served. Before deploying, each adapter is checked on the volume with
    vLLM's load rules (one that fails would keep vLLM from starting). After deploying, the live server must
    list each adapter with `root` = its folder and answer a request; otherwise the app version live before the
    deploy is restored (`modal app rollback APP vN`) and the DeployError says so. The record names both versions
    (`app_version`, `previous_app_version`): a failed A/B gate later rolls back to the same one. The endpoint's
    key is $SERVE_API_KEY.
    `deploy_timeout_s` bounds the deploy (a first image build takes minutes); `timeout_s` bounds the wait
    for the endpoint afterwards (cold start + model load). `options` overrides the latter.
    """
    if expected is not None and not expected:
        raise ValueError("expected must name at least one adapter to check; got none")
    problem = modal_credentials_problem()
    if problem:
        raise DeployError("credentials", problem)
    api_key = os.environ.get(API_KEY_VAR)
    if not api_key:
        raise DeployError("credentials", f"{API_KEY_VAR} is not set: export the key stored in the Modal secret "
                          f"{NAMES.serve_key_secret!r} (the endpoint refuses requests without it)")
    served = modal_adapters(adapters)
    expected = list(expected) if expected is not None else list(served) or [NAMES.sft_model_name]
    unknown = sorted({name for name in [*served, *expected] if name not in ADAPTER_ENV})
    if unknown:
        raise ValueError(f"the Modal app serves only {sorted(ADAPTER_ENV)}; got {unknown}")
    not_chosen = [name for name in expected if name not in served]
    if not_chosen:
        raise DeployError("adapter missing", f"no folder chosen for {not_chosen}: "
                          + "; ".join(f"export {ADAPTER_ENV[n]}=<its folder on the volume>" for n in not_chosen)
                          + " (`python -m pipelines.dpo upload --adapter DIR` prints the SFT one)")
    problems = {n: p for n, p in check_volume_adapters(served).items() if p}
    if problems:  # vLLM refuses to start when one adapter fails to load: keep the running version
        raise DeployError("adapter missing", "; ".join(f"{n}: {why}" for n, why in problems.items())
                          + ". Nothing was deployed; the running version stays.")
    started = datetime.now(UTC)
    deployment = _call_modal(lambda: _deploy_modal_app(served), deploy_timeout_s)
    try:
        record = _check_modal_deployment(deployment, served, expected, started,
                                         options or ReadinessOptions(timeout_s=timeout_s), api_key)
    except DeployError as e:
        raise _rolled_back(e, deployment) from e
    _write_record(state_dir, record)
    return record


def _check_modal_deployment(deployment: ModalDeployment, served: Mapping[str, str], expected: Sequence[str],
                            started: datetime, options: ReadinessOptions, api_key: str) -> DeployRecord:
    """The new version lists and answers every expected adapter, each loaded from the folder asked for."""
    import dataclasses

    missing = {}
    for name in expected:
        info = deployment.adapters.get(name)
        if info is None:
            missing[name] = "not one of the app's adapters"
        elif info.get("problem"):
            missing[name] = info["problem"]
    if missing:  # the server left them out: waiting would not help
        raise DeployError("adapter missing", "; ".join(f"{n}: {why}" for n, why in missing.items())
                          + ". Put the adapter on the volume first (python -m pipelines.dpo upload --adapter DIR).")
    # `modal deploy` is rolling: an old warm container may answer first, listing the previous folders. Poll until
    # the live `root`s are the new version's (within the timeout) instead of judging (and rolling back) on one look.
    ready = check_ready(deployment.url.rstrip("/") + "/v1", list(expected),
                        dataclasses.replace(options, api_key=api_key), roots={n: served[n] for n in expected})
    wrong = {n: ready.roots.get(n) for n in expected if ready.roots.get(n) != served[n]}
    if wrong:  # vLLM's `root` is the folder the live server loaded: it proves which adapter answers
        raise DeployError("adapter missing", f"the live server loaded {wrong}, not {dict(served)}")
    return _record("modal", deployment.url, deployment.base_model, ready, started,
                   {n: (info["path"], info.get("sha256")) for n, info in deployment.adapters.items()},
                   app_name=deployment.app_name, app_version=deployment.version,
                   previous_app_version=deployment.previous_version)


def _rolled_back(error: DeployError, deployment: ModalDeployment) -> DeployError:
    """Restore the version live before this deploy after a failed check; the returned error says what happened."""
    app, version = deployment.app_name, deployment.previous_version
    if version is None:
        return DeployError(error.part, f"{error.detail}. This was the app's first version: nothing to roll back "
                           f"to; stop it with `modal app stop {app}` or fix and deploy again.")
    try:
        _call_modal(lambda: rollback_modal_app(app, version), 600.0)
    except DeployError as e:
        return DeployError(error.part, f"{error.detail}. Rolling back to v{version} failed too ({e}): "
                           f"run `modal app rollback {app} v{version}`.")
    logger.warning("rolled %s back to v%d, the version live before this deploy, after a failed check", app, version)
    return DeployError(error.part, f"{error.detail}. Rolled {app} back to its previous version v{version} "
                       "(the deploy record still describes it).")


def _call_modal(call: Callable[[], T], timeout_s: float) -> T:
    """`call` (one of the Modal calls below), bounded by `timeout_s`, with Modal's errors turned into DeployError.

    It runs on a daemon thread so a stuck build or network call cannot hang the caller; on timeout
    the thread is abandoned (it ends with the process) and the deploy may still finish on Modal.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, name="modal-deploy", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeployError("deploy", f"the Modal call did not finish within {timeout_s:g} s; "
                          "see `modal app list` and the build log, or raise the deploy timeout")
    error = box.get("error")
    if error is None:
        return box["value"]
    if isinstance(error, DeployError):
        raise error
    from modal.exception import AuthError

    if isinstance(error, AuthError):
        raise DeployError("credentials", f"Modal refused the token: {error}. {LOGIN_HINT}") from error
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: not ours to convert
        raise error
    raise DeployError("deploy", f"deploying the Modal app failed: {type(error).__name__}: {error}") from error


def check_volume_adapters(adapters: Mapping[str, str]) -> dict[str, str | None]:
    """Modal: each adapter folder on the volume judged by vLLM's load rules (None = loadable), within 5 min."""
    return _call_modal(lambda: _check_volume_adapters(adapters), 300.0)


def _check_volume_adapters(adapters: Mapping[str, str]) -> dict[str, str | None]:
    """Modal: each adapter folder on the volume judged by vLLM's load rules (None = loadable)."""
    import modal
    import modal.exception

    from infra.adapter_hash import ADAPTER_CONFIG
    from serving.adapters import adapter_config_problem
    from serving.modal_app import SETTINGS

    volume = modal.Volume.from_name(NAMES.volume)
    out: dict[str, str | None] = {}
    files: list[str] | None
    for name, path in adapters.items():
        inside = "/" + str(Path(path).relative_to(NAMES.mount))  # the folder as a path inside the volume
        try:
            files = [Path(e.path).name for e in volume.listdir(inside)]
            config = b"".join(volume.read_file(f"{inside}/{ADAPTER_CONFIG}")) if ADAPTER_CONFIG in files else None
        except modal.exception.NotFoundError:
            files, config = None, None
        out[name] = adapter_config_problem(path, config, files, max_lora_rank=SETTINGS.max_lora_rank)
    return out


def _deploy_modal_app(adapters: Mapping[str, str]) -> ModalDeployment:
    """Modal: deploy the app serving `adapters`, read its URL and the adapters as the new version sees them.

    `modal deploy` runs in a fresh process with the adapter folders in NGPT_SFT_ADAPTER/NGPT_DPO_ADAPTER, so
    the module is evaluated with them and they become part of the app version (a rollback restores them).
    """
    import modal
    import modal.exception

    app_name = NAMES.serve_app
    try:
        modal.App.lookup(app_name)  # raises NotFoundError when the app was never deployed
        previous = modal_app_version(app_name)  # what a failed check or gate rolls back to, by number
    except modal.exception.NotFoundError:
        previous = None
    chosen = {var: str(adapters.get(name, "")) for name, var in ADAPTER_ENV.items()}  # "" = not served
    env = {**os.environ, **chosen,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "modal", "deploy", "-m", "serving.modal_app"], env=env,
                          cwd=REPO_ROOT, check=False)
    if done.returncode != 0:
        raise DeployError("deploy", f"`modal deploy -m serving.modal_app` exited {done.returncode} (its output is "
                          "above); nothing changed if it failed before the deploy step")
    url = modal.Function.from_name(app_name, "serve").get_web_url()
    if not url:
        raise DeployError("deploy", f"the app {app_name} deployed but `serve` has no web URL")
    described = modal.Function.from_name(app_name, "describe_adapters").remote()
    try:
        version = modal_app_version(app_name)
    except DeployError as e:  # the deploy itself is done: the check still runs, the record lacks its number
        logger.warning("could not read the new version's number: %s", e)
        version = None
    return ModalDeployment(url=url, app_name=app_name, base_model=NAMES.base_model, adapters=described,
                           version=version, previous_version=previous)


_VERSION = re.compile(r'"version"\s*:\s*"v(\d+)"')  # a row of `modal app history APP --json`


def modal_app_version(app_name: str) -> int | None:
    """Modal: the app's newest version (the one live while it is deployed), from `modal app history APP --json`;
    None when it has no history. Every deploy and every rollback adds a version."""
    cmd = [sys.executable, "-m", "modal", "app", "history", app_name, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError("deploy", f"`modal app history {app_name} --json` exited {done.returncode}: "
                          f"{done.stderr.strip()[-500:]}")
    versions = [int(v) for v in _VERSION.findall(done.stdout)]
    return max(versions) if versions else None


def rollback_modal_app(app_name: str, version: int) -> None:
    """Modal: `modal app rollback APP vN`: version N, its adapters included, serves again (as a new version).

    Always an explicit version: without one Modal goes back one version from the newest, and a rollback is itself
    a version, so a second plain rollback would restore what the first one removed."""
    done = subprocess.run([sys.executable, "-m", "modal", "app", "rollback", app_name, f"v{version}"], check=False)
    if done.returncode != 0:
        raise DeployError("deploy", f"`modal app rollback {app_name} v{version}` exited {done.returncode}")


LOCAL_STATE = "local_server.json"  # pid, URL, port and API key of the running local server (mode 0600)


def deploy_local(
    base_dir: Path,
    adapters: Mapping[str, Path],
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 180.0,
    port: int = 0,
    served_model_name: str | None = None,
) -> DeployRecord:
    """(Re)start the local vLLM with `adapters` and check it as the Modal path does.

    The new server starts before the old one stops (unless both want the same fixed port), so a
    failed deploy leaves the previous server and its record in place.
    """
    from serving.adapters import adapter_problem, hash_adapter_dir
    from serving.local_vllm import start_local_vllm, stop_pid

    problems = {n: adapter_problem(p) for n, p in adapters.items()}
    if any(problems.values()):
        raise DeployError("adapter missing", "; ".join(f"{n}: {why}" for n, why in problems.items() if why))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    old = _local_state(state_dir)
    if old and port and old.get("port") == port:
        stop_pid(int(old["pid"]))  # the port must be free before the new server binds it
        old = None
    started = datetime.now(UTC)
    server = start_local_vllm(base_dir, adapters, port=port, served_model_name=served_model_name,
                              timeout_s=timeout_s, log_path=state_dir / "local_server.log")
    ready = server.readiness
    wrong = {n: ready.roots.get(n) for n, p in adapters.items() if ready.roots.get(n) != str(p)}
    if wrong:  # vLLM lists the folder it loaded each adapter from
        server.stop()
        raise DeployError("adapter missing", f"the new server loaded {wrong}, not {dict(adapters)}")
    if old:
        stop_pid(int(old["pid"]))
    write_json(state_dir / LOCAL_STATE, {"pid": server.pid, "url": server.url, "port": server.port,
                                          "started_at": started.isoformat(), "log": str(server.log_path),
                                          "api_key": server.api_key}, private=True)
    record = _record("local", server.url, served_model_name or str(base_dir), ready, started,
                     {n: (str(p), hash_adapter_dir(p)) for n, p in adapters.items()}, pid=server.pid)
    _write_record(state_dir, record)
    return record


def local_api_key(state_dir: Path = DEFAULT_STATE_DIR) -> str | None:
    """The API key of the local server recorded in `state_dir` (None when there is none)."""
    state = _local_state(Path(state_dir))
    return state.get("api_key") if state else None


def stop_local(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Stop the local server recorded in `state_dir`; False when none was running. Its records go too."""
    from serving.local_vllm import stop_pid

    state_dir = Path(state_dir)
    state = _local_state(state_dir)
    stopped = bool(state) and stop_pid(int(state["pid"]))
    for path in (state_dir / LOCAL_STATE, record_path(state_dir, "local")):
        path.unlink(missing_ok=True)
    return stopped


def live_local(state_dir: Path, adapters: Mapping[str, Path], *, exact: bool = True,
               timeout_s: float = 20.0) -> DeployRecord | None:
    """The last local deploy's record when that server still answers serving these adapter files.

    `exact`: it serves exactly `adapters`; else at least them (it may serve more). None otherwise.
    """
    from serving.adapters import hash_adapter_dir

    record = load_record(state_dir, "local")
    key = local_api_key(state_dir)
    if record is None or key is None:
        return None
    served = {a.name: (a.path, a.sha256) for a in record.adapters}
    wanted = {name: (str(path), hash_adapter_dir(path)) for name, path in adapters.items()}
    if served != wanted if exact else any(served.get(n) != v for n, v in wanted.items()):
        return None
    try:
        check_ready(record.base_url, list(adapters), ReadinessOptions(timeout_s=timeout_s, max_delay_s=2.0,
                                                                       api_key=key))
    except (DeployError, OSError) as e:
        logger.info("the last local server at %s does not answer (%s)", record.base_url, e)
        return None
    return record


def _local_state(state_dir: Path) -> dict | None:
    path = state_dir / LOCAL_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def _record(target: str, url: str, base_model: str, ready, started: datetime,
            adapter_files: Mapping[str, tuple[str, str | None]], **extra) -> DeployRecord:
    served = [
        AdapterRecord(name=n, path=path, parent=ready.models.get(n), sha256=sha, root=ready.roots.get(n))
        for n, (path, sha) in adapter_files.items()
        if n in ready.models
    ]
    return DeployRecord(
        target=target,
        url=url.rstrip("/"),
        base_url=url.rstrip("/") + "/v1",
        base_model=base_model,
        models=sorted(ready.models),
        adapters=served,
        ready_seconds=round((datetime.now(UTC) - started).total_seconds(), 3),
        deployed_at=started.isoformat(),
        answers={n: text[:200] for n, text in ready.answers.items()},
        **extra,
    )


def _write_record(state_dir: Path, record: DeployRecord) -> None:
    path = record_path(state_dir, record.target)
    write_json(path, record.to_dict())
    logger.info("deployed %s at %s; record %s", [a.name for a in record.adapters], record.url, path)
