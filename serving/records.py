"""What a deploy leaves: the record of what is live (`DeployRecord`), one per target, in `<state_dir>`.

Written atomically (infra/atomic.py) only when every adapter passed the readiness check, so a failed deploy leaves
the previous record; both deploys (serving/modal_deploy.py, serving/local_deploy.py) make and write them here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from infra.atomic import write_json

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("data/runs/serving")


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


def record_path(state_dir: Path, target: str) -> Path:
    return Path(state_dir) / f"{target}_deployment.json"


def load_record(state_dir: Path, target: str) -> DeployRecord | None:
    """The last successful deploy's record, or None."""
    path = record_path(state_dir, target)
    if not path.is_file():
        return None
    return DeployRecord.from_dict(json.loads(path.read_text()))


def make_record(target: str, url: str, base_model: str, ready, started: datetime,
                adapter_files: Mapping[str, tuple[str, str | None]], **extra) -> DeployRecord:
    """The record of a deploy that passed the readiness check `ready` (adapters it did not list are left out)."""
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


def write_record(state_dir: Path, record: DeployRecord) -> None:
    path = record_path(state_dir, record.target)
    write_json(path, record.to_dict())
    logger.info("deployed %s at %s; record %s", [a.name for a in record.adapters], record.url, path)
