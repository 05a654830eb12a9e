"""Deploy to the local vLLM (its CPU build, serving/local_vllm.py): start, check, reuse, stop.

The same readiness check as the Modal deploy (serving/readiness.py), the same DeployRecord (serving/records.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from infra.atomic import write_json
from serving.errors import DeployError
from serving.readiness import ReadinessOptions, check_ready
from serving.records import DEFAULT_STATE_DIR, DeployRecord, load_record, make_record, record_path, write_record

logger = logging.getLogger(__name__)

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
    record = make_record("local", server.url, served_model_name or str(base_dir), ready, started,
                     {n: (str(p), hash_adapter_dir(p)) for n, p in adapters.items()}, pid=server.pid)
    write_record(state_dir, record)
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


