"""Deploy the serving app to Modal (vLLM on a GPU) and prove every adapter is live, else roll back.

It ends with the readiness check the local deploy uses (serving/readiness.py) and writes the same DeployRecord
(serving/records.py) to `<state_dir>/modal_deployment.json` only when everything passed; on any failure a
DeployError names the part and the previous record stays. The local deploy is serving/local_deploy.py.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from infra.modal_credentials import LOGIN_HINT, modal_credentials_problem
from infra.names import ENV_VARS, NAMES
from serving.errors import DeployError
from serving.readiness import ReadinessOptions, check_ready
from serving.records import DEFAULT_STATE_DIR, DeployRecord, make_record, write_record
from serving.scale import SCALE_VAR, ServeScale

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_EXPECTED = (NAMES.sft_model_name, NAMES.dpo_model_name)
API_KEY_VAR = "SERVE_API_KEY"  # the Modal endpoint's bearer key on the client side (and in the serve-key secret)
REPO_ROOT = Path(__file__).resolve().parent.parent  # `modal deploy -m serving.modal_app` runs from here
CHOSEN_BY = {NAMES.sft_model_name: ENV_VARS["sft_adapter"][0], NAMES.dpo_model_name: ENV_VARS["dpo_adapter"][0]}
SERVED_VAR = ENV_VARS["served"][0]  # the JSON {served name: folder} the app module reads (infra/names.py)
_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a model name vLLM serves (no spaces, no slash)


@dataclass(frozen=True)
class ModalDeployment:
    """What `_deploy_modal_app` learns from Modal."""

    url: str
    app_name: str
    base_model: str
    adapters: dict[str, dict]  # name -> serving.adapters.describe_adapter() output, seen on the volume
    version: int | None = None  # the app version this deploy made
    previous_version: int | None = None  # the version live before it (the rollback target); None: the first one


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
    scale: ServeScale | None = None,
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
    for the endpoint afterwards (cold start + model load). `options` overrides the latter. `scale`: the app's
    replica bounds (serving/scale.py; None: $NGPT_SERVE_SCALE, else the defaults).
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
    bad = sorted(name for name in [*served, *expected] if not _SERVED_NAME.match(name))
    if bad:
        raise ValueError(f"served names must be letters, digits, '.', '_' or '-' (vLLM's model names); got {bad}")
    not_chosen = [name for name in expected if name not in served]
    if not_chosen:
        raise DeployError("adapter missing", f"no folder chosen for {not_chosen}: "
                          + "; ".join(f"export {CHOSEN_BY[n]}=<its folder on the volume>" if n in CHOSEN_BY
                                      else f"pass {n}'s folder in `adapters`" for n in not_chosen)
                          + " (`python -m pipelines.dpo upload --adapter DIR` prints the SFT one)")
    problems = {n: p for n, p in check_volume_adapters(served).items() if p}
    if problems:  # vLLM refuses to start when one adapter fails to load: keep the running version
        raise DeployError("adapter missing", "; ".join(f"{n}: {why}" for n, why in problems.items())
                          + ". Nothing was deployed; the running version stays.")
    started = datetime.now(UTC)
    scale = scale or ServeScale.from_env()
    deployment = _call_modal(lambda: _deploy_modal_app(served, scale), deploy_timeout_s)
    try:
        record = _check_modal_deployment(deployment, served, expected, started,
                                         options or ReadinessOptions(timeout_s=timeout_s), api_key)
    except DeployError as e:
        raise _rolled_back(e, deployment) from e
    write_record(state_dir, record)
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
    return make_record("modal", deployment.url, deployment.base_model, ready, started,
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


def scale_for_sampling(scale: ServeScale) -> bool:
    """Let Modal's autoscaler run up to `scale.sample_max_containers` replicas of the deployed serving app while
    `generate` samples (`Function.update_autoscaler`: no redeploy; the next deploy returns the app to its static
    bound, `scale.max_containers`). False, with a warning, when Modal refuses: sampling then runs on the
    deployed bound, slower but the same."""
    import modal
    import modal.exception

    try:
        modal.Function.from_name(NAMES.serve_app, "serve").update_autoscaler(
            max_containers=scale.sample_max_containers, scaledown_window=scale.scaledown_window_s)
    except (modal.exception.Error, OSError) as e:
        logger.warning("could not raise %s's replica bound to %d for sampling (%s): sampling runs on the "
                       "deployed bound", NAMES.serve_app, scale.sample_max_containers, e)
        return False
    logger.info("%s: up to %d replicas while sampling (Modal adds one above %d requests in flight per replica)",
                NAMES.serve_app, scale.sample_max_containers, scale.target_inputs)
    return True


def _deploy_modal_app(adapters: Mapping[str, str], scale: ServeScale) -> ModalDeployment:
    """Modal: deploy the app serving `adapters`, read its URL and the adapters as the new version sees them.

    `modal deploy` runs in a fresh process with the adapter folders in NGPT_SERVED_ADAPTERS (JSON), so
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
    served = json.dumps({name: str(path) for name, path in adapters.items()}, sort_keys=True)
    env = {**os.environ, SERVED_VAR: served, SCALE_VAR: scale.to_env(),
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


