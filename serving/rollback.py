"""Put the previous DPO adapter back when a new one fails the A/B gate.

Each deploy that changes the served adapters saves the record it replaces as `<target>_deployment.previous.json`
(steps/deploy.py). Local: `rollback_local` redeploys those adapter folders, or serves the SFT adapter alone when
there was no earlier DPO adapter. Modal: `rollback_modal` returns the serving app to the version that was live
before the rejected deploy, by number (`modal app rollback APP vN`; Modal keeps every version, and the adapters
live in content-addressed folders, so that version still finds its files), then writes what serves now into the
deployment record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from infra.atomic import write_json
from infra.names import NAMES
from serving.errors import DeployError
from serving.local_deploy import deploy_local
from serving.modal_deploy import deploy_modal, modal_app_version, rollback_modal_app
from serving.records import DeployRecord, load_record, record_path

logger = logging.getLogger(__name__)


def previous_path(state_dir: Path, target: str) -> Path:
    return record_path(state_dir, target).with_name(f"{target}_deployment.previous.json")


def save_previous(state_dir: Path, record: DeployRecord) -> None:
    """Keep `record` (what is live now, about to be replaced) for a rollback, written as deploy records are."""
    write_json(previous_path(state_dir, record.target), record.to_dict())


def rollback_local(state_dir: Path, base_dir: Path, sft: dict[str, Path], *, timeout_s: float = 180.0,
                   port: int = 0) -> DeployRecord:
    """Redeploy the local server with the adapters of the previous deploy, or `sft` alone if there was none."""
    adapters: dict[str, Path] = dict(sft)
    previous = _previous(state_dir, "local")
    if previous is not None:
        adapters.update({a.name: Path(a.path) for a in previous.adapters if Path(a.path).is_dir()})
    logger.warning("rolling the local server back to %s", {n: str(p) for n, p in adapters.items()})
    return deploy_local(base_dir, adapters, state_dir=state_dir, timeout_s=timeout_s, port=port)


def rollback_modal(state_dir: Path, rejected: DeployRecord) -> DeployRecord | None:
    """Undo the Modal deploy `rejected` describes; returns the record of what serves now (None: not known here).

    The app goes back to `rejected.previous_app_version` by number, never by `modal app rollback APP` alone: a
    rollback is itself a new version, so "one back" from it would be the rejected deploy again. Then the
    deployment record says what is live: the record that deploy replaced, with the rollback's version and time,
    or no record when that one is not known here (the next run deploys). Either way the deploy step's stamp no
    longer matches the record, so a rerun deploys again instead of taking the rejected deploy from ZenML's cache.

    Harmless to repeat: once the record on disk is no longer `rejected` (rolled back already, or replaced by a
    later deploy), nothing is done and the record on disk is returned.
    """
    state_dir = Path(state_dir)
    current = load_record(state_dir, "modal")
    if current is None or current.deployed_at != rejected.deployed_at:
        logger.info("the Modal deploy of %s is no longer the recorded one: nothing to roll back", rejected.deployed_at)
        return current
    app, version = rejected.app_name or NAMES.serve_app, rejected.previous_app_version
    previous = _previous(state_dir, "modal")
    if version is None:  # the app's first version (or one recorded before versions were): no number to go back to
        earlier = {a.name: a.path for a in (previous.adapters if previous else []) if a.name == NAMES.dpo_model_name}
        logger.warning("no version of %s to roll back to: redeploying it with %s", app,
                       f"the earlier DPO adapter {earlier}" if earlier else f"{NAMES.sft_model_name} alone")
        return deploy_modal(adapters={NAMES.dpo_model_name: "", **earlier}, state_dir=state_dir)
    rollback_modal_app(app, version)
    logger.warning("rolled %s back to v%d, the version live before the rejected deploy", app, version)
    try:
        now_version = modal_app_version(app)
    except DeployError as e:  # the rollback is done; only the record's version number is missing
        logger.warning("could not read the version number after the rollback: %s", e)
        now_version = None
    if previous is None or previous.app_version not in (None, version):
        record_path(state_dir, "modal").unlink(missing_ok=True)  # never claim the rejected adapter is live
        logger.warning("no record of v%d's adapters here: removed the deployment record; the next run deploys",
                       version)
        return None
    restored = dataclasses.replace(previous, deployed_at=datetime.now(UTC).isoformat(), app_version=now_version,
                                   previous_app_version=None)
    write_json(record_path(state_dir, "modal"), restored.to_dict())
    return restored


def _previous(state_dir: Path, target: str) -> DeployRecord | None:
    path = previous_path(state_dir, target)
    return DeployRecord.from_dict(json.loads(path.read_text())) if path.is_file() else None
