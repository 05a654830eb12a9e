"""A step's scratch folder: the files a step returns live there until ZenML has stored them, then it goes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for the files a step returns, removed when the step ends (passed or failed).

    The JsonlFile materializer copies a returned file into the artifact store before the step ends, so the
    folder is not needed after; a later step loads its own copy. Removal uses the step context's cleanup
    registry, as ZenML's own materializers do for their temporary folders (ZenML is pinned; a test runs it).
    Outside a step (a direct call in a test) the caller owns the folder.
    """
    from zenml import get_step_context

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        context = get_step_context()
    except RuntimeError:
        return path
    context._cleanup_registry.register_callback(lambda: shutil.rmtree(path, ignore_errors=True))
    return path
