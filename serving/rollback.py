"""Put the previous DPO adapter back when a new one fails the A/B gate.

Local: each local deploy that changes the served adapters first saves the record it replaces as
`local_deployment.previous.json` (steps/deploy.py); `rollback_local` redeploys those adapter folders, or
serves the SFT adapter alone when there was no earlier DPO adapter. Modal: `modal app rollback APP`
returns the serving app to its previous deployed version (Modal keeps them; the adapters live in
content-addressed folders, so the previous version still finds its files).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from serving.deploy import DeployRecord, deploy_local, record_path, write_json
from serving.deploy import rollback_modal_app as rollback_modal  # noqa: F401 - the Modal side, re-exported

logger = logging.getLogger(__name__)


def previous_path(state_dir: Path, target: str) -> Path:
    return record_path(state_dir, target).with_name(f"{target}_deployment.previous.json")


def save_previous(state_dir: Path, record: DeployRecord) -> None:
    """Keep `record` (what is live now, about to be replaced) for a rollback, written as deploy records are."""
    write_json(previous_path(state_dir, record.target), record.to_dict())


def rollback_local(state_dir: Path, base_dir: Path, sft: dict[str, Path]) -> DeployRecord:
    """Redeploy the local server with the adapters of the previous deploy, or `sft` alone if there was none."""
    path = previous_path(state_dir, "local")
    adapters: dict[str, Path] = dict(sft)
    if path.is_file():
        previous = DeployRecord.from_dict(json.loads(path.read_text()))
        kept = {a.name: Path(a.path) for a in previous.adapters if Path(a.path).is_dir()}
        adapters.update(kept)
    logger.warning("rolling the local server back to %s", {n: str(p) for n, p in adapters.items()})
    return deploy_local(base_dir, adapters, state_dir=state_dir)
