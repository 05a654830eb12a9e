"""Cache tokens for the two steps whose output is a place, not data: upload (files on the volume) and deploy
(a live server).

ZenML's cache knows a step's inputs, not whether the files or the server are still there. So each of those
steps gets one more parameter, a token, chosen at launch:
- the token the step recorded on its last success, when what it made is verifiably still in place: the
  step's cache key is then the one it had, and a run with nothing changed is served from the cache (no new
  artifact version, no restart);
- a fresh random token otherwise (first run, folder deleted, server stopped, rolled back or replaced by a
  manual deploy): the key is new, the step runs and puts things in place, and records its token.

"In place" for deploy: the deployment record is the one the step stamped (same `deployed_at`; a rollback or
a manual deploy writes a new record) and the target says it still serves (`Target.deployment_in_place`:
locally, the server answers with its adapters; a Modal deployment is persistent until stopped, so its record
is trusted, with no request that would wake a GPU; `deploy --stop` removes the record, so the next run
deploys). For upload: the target says the stamped folders still hold both files (`Target.uploads_in_place`).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from targets.spec import TargetSpec

logger = logging.getLogger(__name__)

DEPLOY_TOKEN = "{target}_deploy_token.json"  # beside the deployment record
UPLOAD_TOKEN = "upload_token.json"  # in the pipeline's workdir


def deploy_token(spec: TargetSpec) -> str:
    """The deploy step's token for this launch (see the module docstring)."""
    from targets import open_target

    target = open_target(spec)
    stamp = _read(Path(spec.state_dir) / DEPLOY_TOKEN.format(target=spec.profile))
    record = target.deployment()
    if stamp is None or record is None or stamp.get("deployed_at") != record.deployed_at:
        return _fresh("deploy", "no deployment this pipeline made is recorded as live")
    if not target.deployment_in_place(record):
        return _fresh("deploy", f"the server at {record.base_url} does not answer with its adapters")
    return str(stamp["token"])


def stamp_deploy(state_dir: Path, target: str, token: str) -> None:
    """Record that the deployment now in the record was put in place by a deploy step with `token`."""
    from infra.atomic import write_json
    from serving.records import load_record

    record = load_record(Path(state_dir), target)
    if record is not None:
        write_json(Path(state_dir) / DEPLOY_TOKEN.format(target=target),
                   {"token": token, "deployed_at": record.deployed_at})


def upload_token(spec: TargetSpec) -> str:
    """The upload step's token for this launch (see the module docstring)."""
    from targets import open_target

    stamp = _read(Path(spec.workdir) / UPLOAD_TOKEN)
    if stamp is None or stamp.get("target") != spec.profile:
        return _fresh("upload", "no upload is recorded")
    paths = list(stamp.get("paths", []))
    if not open_target(spec).uploads_in_place(paths):
        return _fresh("upload", f"uploaded files are gone from {paths}")
    return str(stamp["token"])


def stamp_upload(workdir: Path, target: str, token: str, path: str) -> None:
    """Record that `path` was uploaded by an upload step with `token` (every such path stays checked)."""
    from infra.atomic import write_json

    file = Path(workdir) / UPLOAD_TOKEN
    stamp = _read(file)
    paths = stamp.get("paths", []) if stamp and stamp.get("token") == token and stamp.get("target") == target else []
    write_json(file, {"token": token, "target": target, "paths": sorted({*paths, path})})


def _fresh(step: str, why: str) -> str:
    logger.info("%s step will run: %s", step, why)
    return uuid.uuid4().hex


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("token"), str) else None
