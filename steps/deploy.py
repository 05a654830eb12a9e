"""Step: redeploy the served adapters ("seinfeld" SFT + "seinfeld-dpo") and check each one answers.

Whether the server is still up is a fact about now, not about the inputs, so the cache is keyed on it too:
`place_token` (steps/place_tokens.py) is the token of the last deploy while that deployment is still
in place, so a run with nothing changed is served from the cache (no new version, no restart), and a new
one when it is not, so the step runs. When it runs, it is idempotent: if the last deploy's server still
answers with exactly these adapter files, it is kept (no restart) and its record returned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step

from infra.names import NAMES
from steps.names import Artifact
from steps.records import AdapterRef
from targets.spec import TargetSpec

logger = logging.getLogger(__name__)


@step
def deploy_adapters(
    adapter: AdapterRef,
    target: TargetSpec,
    place_token: str = "",
    previous_adapter: AdapterRef | None = None,
) -> Annotated[dict[str, Any], ArtifactConfig(name=Artifact.DEPLOYMENT)]:
    """Serve the SFT adapter and `adapter` (and, in a later round, `previous_adapter` as "seinfeld-dpo-prev", for
    the A/B of this round over the last) where the target serves (targets/), and wait until each answers; what
    served before is kept for a failed gate's rollback. Returns the deployment record (URL, models, adapter paths
    and hashes, readiness time). The timeout and port come from the run's `Operations`, in no cache key."""
    from steps.place_tokens import stamp_deploy
    from targets import current_operations, open_target

    # What is served beside SFT, each under its model name: the one place to add another adapter to the A/B.
    served = {NAMES.dpo_model_name: adapter}
    if previous_adapter is not None:
        served[NAMES.prev_model_name] = previous_adapter  # rounds: the last round's, for this round's A/B over it
    record, reused = open_target(target).serve(served, current_operations())
    if place_token:
        stamp_deploy(Path(target.state_dir), target.profile, place_token)
    data = record.to_dict()
    logger.info("%s %s at %s: %s", "kept" if reused else "deployed", target.profile, record.base_url, record.models)
    log_metadata(metadata={"target": target.profile, "url": record.url, "base_url": record.base_url,
                           "models": list(record.models), "reused": reused, "ready_seconds": record.ready_seconds,
                           "adapter_sha256": adapter.sha256})
    return {**data, "reused": reused, "trained_adapter_sha256": adapter.sha256}
