"""Run DPO training on Modal from this machine.

Choice: an ephemeral run of the app (`app.run(detach=True)` + `train.remote`), not a deployed function.
The container then always runs the code of the checkout that launched it (the adapter's lineage is this
commit; no `modal deploy` step to forget or to go stale), and `detach=True` keeps the run going if this
client disconnects: the adapter and its metrics still land on the volume.
"""

from __future__ import annotations

import logging
from typing import Any

from training.config import DPOTrainConfig
from training.modal_auth import modal_auth_errors, require_modal_credentials
from training.upload import container_path

logger = logging.getLogger(__name__)


def train_remote(data_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on Modal's L4 with the split at `data_path` (a volume path such as /data/dpo/<hash>).

    Overrides are validated here first (unknown keys and bad values fail before any GPU starts), then
    credentials; returns the metrics dict of the run (with adapter_dir, adapter_sha256, metrics_path).
    """
    data_dir = container_path(data_path)
    DPOTrainConfig.from_overrides(overrides, data_dir=data_dir)  # validate only
    require_modal_credentials()
    import modal

    from training.modal_app import app, train

    logger.info("starting DPO training on Modal (%s) with data %s", app.name, data_dir)
    with modal_auth_errors(), modal.enable_output(), app.run(detach=True):
        return train.remote(data_dir, overrides or {})
