"""Redeploy the adapters and prove they are live: Modal (vLLM on a GPU) or the local CPU server.

Both paths end with the same readiness check (serving/readiness.py) and return the same
DeployRecord, which is written atomically to `<state_dir>/<target>_deployment.json` only when
everything passed; on any failure a DeployError names the part and the previous record stays.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from infra.names import NAMES
from serving.errors import DeployError
from serving.readiness import ReadinessOptions, check_ready

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("data/runs/serving")
DEFAULT_EXPECTED = (NAMES.sft_model_name, NAMES.dpo_model_name)
LOGIN_HINT = (
    "Log in with `modal token new` (opens a browser and writes ~/.modal.toml), "
    "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET."
)


@dataclass(frozen=True)
class AdapterRecord:
    """One served adapter: its name, where it was loaded from, its parent, and a content hash if known."""

    name: str
    path: str
    parent: str | None
    sha256: str | None


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


def record_path(state_dir: Path, target: str) -> Path:
    return Path(state_dir) / f"{target}_deployment.json"


def load_record(state_dir: Path, target: str) -> DeployRecord | None:
    """The last successful deploy's record, or None."""
    path = record_path(state_dir, target)
    if not path.is_file():
        return None
    return DeployRecord.from_dict(json.loads(path.read_text()))


def modal_credentials_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why Modal would refuse us for lack of a token (None when one is configured). No network.

    Mirrors modal.config: MODAL_TOKEN_ID / MODAL_TOKEN_SECRET override the active profile of
    ~/.modal.toml (or $MODAL_CONFIG_PATH; profile $MODAL_PROFILE, else the one marked active, else
    "default"); MODAL_OAUTH_REFRESH_TOKEN is the other accepted login.
    """
    env = os.environ if env is None else env
    if env.get("MODAL_OAUTH_REFRESH_TOKEN"):
        return None
    path = Path(env.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml").expanduser()
    profile: dict = {}
    if path.is_file():
        try:
            config = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            return f"{path} is not readable TOML ({e}). {LOGIN_HINT}"
        name = env.get("MODAL_PROFILE") or next(
            (k for k, v in config.items() if isinstance(v, dict) and v.get("active") is True), "default"
        )
        profile = config.get(name) if isinstance(config.get(name), dict) else {}
    token_id = env.get("MODAL_TOKEN_ID") or profile.get("token_id")
    token_secret = env.get("MODAL_TOKEN_SECRET") or profile.get("token_secret")
    if token_id and token_secret:
        return None
    missing = [n for n, v in (("token id", token_id), ("token secret", token_secret)) if not v]
    return f"no Modal credentials ({' and '.join(missing)} missing; looked in the environment and {path}). {LOGIN_HINT}"


def deploy_modal(
    *,
    expected: Sequence[str] = DEFAULT_EXPECTED,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 1200.0,
    deploy_timeout_s: float = 1800.0,
    options: ReadinessOptions | None = None,
) -> DeployRecord:
    """Deploy the Modal serving app, wait until every `expected` adapter is listed and answers.

    `deploy_timeout_s` bounds `app.deploy()` (a first image build takes minutes); `timeout_s` bounds
    the wait for the endpoint afterwards (cold start + model load). `options` overrides the latter.
    """
    if not expected:
        raise ValueError("expected must name at least one adapter to check; got none")
    problem = modal_credentials_problem()
    if problem:
        raise DeployError("credentials", problem)
    started = datetime.now(UTC)
    deployment = _call_modal(deploy_timeout_s)
    missing = {}
    for name in expected:
        info = deployment.adapters.get(name)
        if info is None:
            missing[name] = "not one of the app's adapters"
        elif info.get("problem"):
            missing[name] = info["problem"]
    if missing:  # the server left them out: waiting would not help
        raise DeployError("adapter missing", "; ".join(f"{n}: {why}" for n, why in missing.items())
                          + ". Upload the adapter to the volume first (python -m pipelines.dpo upload).")
    opts = options or ReadinessOptions(timeout_s=timeout_s)
    ready = check_ready(deployment.url.rstrip("/") + "/v1", list(expected), opts)
    record = _record("modal", deployment.url, deployment.base_model, ready, started,
                     {n: (info["path"], info.get("sha256")) for n, info in deployment.adapters.items()},
                     app_name=deployment.app_name)
    _write_record(state_dir, record)
    return record


def _call_modal(timeout_s: float) -> ModalDeployment:
    """_deploy_modal_app, bounded by `timeout_s`, with Modal's errors turned into DeployError.

    It runs on a daemon thread so a stuck build or network call cannot hang the caller; on timeout
    the thread is abandoned (it ends with the process) and the deploy may still finish on Modal.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = _deploy_modal_app()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=target, name="modal-deploy", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeployError("deploy", f"app.deploy() did not finish within {timeout_s:g} s; "
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


def _deploy_modal_app() -> ModalDeployment:
    """The only function that talks to Modal: deploy the app, read its URL and the adapters on the volume."""
    import modal

    from serving import modal_app

    with modal.enable_output():
        modal_app.app.deploy()
    app_name = modal_app.app.name
    url = modal.Function.from_name(app_name, "serve").get_web_url()
    if not url:
        raise DeployError("deploy", f"the app {app_name} deployed but `serve` has no web URL")
    adapters = modal.Function.from_name(app_name, "describe_adapters").remote()
    return ModalDeployment(url=url, app_name=app_name, base_model=modal_app.SETTINGS.model_name,
                           adapters=adapters)


def deploy_local(
    base_dir: Path,
    adapters: Mapping[str, Path],
    *,
    state_dir: Path = DEFAULT_STATE_DIR,
    timeout_s: float = 180.0,
    port: int = 0,
    served_model_name: str | None = None,
) -> DeployRecord:
    """(Re)start the local server with `adapters` and check it as the Modal path does.

    The new server starts before the old one stops (unless both want the same fixed port), so a
    failed deploy leaves the previous server and its record in place.
    """
    from serving.adapters import adapter_problem, hash_adapter_dir
    from serving.local_process import start_local_server, stop_pid

    problems = {n: adapter_problem(p) for n, p in adapters.items()}
    if any(problems.values()):
        raise DeployError("adapter missing", "; ".join(f"{n}: {why}" for n, why in problems.items() if why))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / "local_server.json"
    old = json.loads(pid_file.read_text()) if pid_file.is_file() else None
    if old and port and old.get("port") == port:
        stop_pid(int(old["pid"]))  # the port must be free before the new server binds it
        old = None
    started = datetime.now(UTC)
    try:
        handle = start_local_server(base_dir, adapters, port, served_model_name=served_model_name,
                                    ready_timeout_s=timeout_s, log_path=state_dir / "local_server.log",
                                    detach=True)
    except RuntimeError as e:
        raise DeployError("startup", str(e)) from e
    base_name = served_model_name or str(base_dir)
    try:
        ready = check_ready(handle.base_url, list(adapters), ReadinessOptions(timeout_s=timeout_s))
    except BaseException:
        handle.stop()  # the new server failed its check: the old one (if any) keeps serving
        raise
    if old:
        stop_pid(int(old["pid"]))
    _write_json(pid_file, {"pid": handle.pid, "url": handle.url, "port": handle.port,
                           "started_at": started.isoformat(), "log": str(handle.log_path)})
    record = _record("local", handle.url, base_name, ready, started,
                     {n: (str(p), hash_adapter_dir(p)) for n, p in adapters.items()}, pid=handle.pid)
    _write_record(state_dir, record)
    return record


def _record(target: str, url: str, base_model: str, ready, started: datetime,
            adapter_files: Mapping[str, tuple[str, str | None]], **extra) -> DeployRecord:
    served = [
        AdapterRecord(name=n, path=path, parent=ready.models.get(n), sha256=sha)
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
    _write_json(path, record.to_dict())
    logger.info("deployed %s at %s; record %s", [a.name for a in record.adapters], record.url, path)


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a temp file in the same folder, then rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
