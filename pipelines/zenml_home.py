"""Where ZenML keeps its store: `<repo>/.zenml`, set up before `zenml` is first imported.

ZenML reads its configuration once, at import, so `use_project_home()` must run before any
`import zenml`. It keeps an existing ZENML_CONFIG_PATH (tests point it into a temporary folder),
turns analytics off unless the user opted in explicitly, and pins ZenML's source root to this
repository so steps resolve as `steps.<module>` wherever the command runs from.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = REPO_ROOT / ".zenml"
STORE_FILE = "config.yaml"  # written by ZenML when the store is first initialised

logger = logging.getLogger(__name__)

_ENV_DEFAULTS = {
    "ZENML_ANALYTICS_OPT_IN": "false",  # no usage analytics call from this project
    "ZENML_AUTO_OPEN_DASHBOARD": "false",  # never open a browser from a pipeline run
    "AUTO_OPEN_DASHBOARD": "false",
    "ZENML_ENABLE_REPO_INIT_WARNINGS": "false",  # we pin the source root; no `zenml init` needed
}


def zenml_home() -> Path:
    """The ZenML home in use: $ZENML_CONFIG_PATH, else <repo>/.zenml."""
    return Path(os.environ.get("ZENML_CONFIG_PATH") or DEFAULT_HOME).expanduser().resolve()


def use_project_home() -> Path:
    """Point ZenML at the project's home (set the environment); returns it. Call before importing zenml."""
    home = zenml_home()
    if "zenml" in sys.modules and os.environ.get("ZENML_CONFIG_PATH") != str(home):
        raise RuntimeError(
            "zenml was imported before pipelines.zenml_home.use_project_home(); its store would be the user's "
            "global one. Call use_project_home() first (the CLI does)."
        )
    os.environ["ZENML_CONFIG_PATH"] = str(home)
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    home.mkdir(parents=True, exist_ok=True)
    return home


def init_zenml() -> Path:
    """Set the home, import ZenML, pin the source root and make sure the local store exists."""
    home = use_project_home()
    first_run = not (home / STORE_FILE).exists()
    level = logging.getLogger().level
    raw_stderr = _RawStream(sys.stderr)  # before ZenML wraps sys.stderr.write to capture step logs
    from zenml.client import Client
    from zenml.utils import source_utils

    _one_console_handler(level, raw_stderr)
    source_utils.set_custom_source_root(str(REPO_ROOT))
    Client().active_stack_model  # noqa: B018 - touching the stack creates the store and default stack
    if first_run and os.environ["ZENML_ANALYTICS_OPT_IN"].lower() in ("false", "0", "no"):
        from zenml.config.global_config import GlobalConfiguration

        GlobalConfiguration().analytics_opt_in = False  # also in the store's config.yaml, for the plain `zenml` CLI
    if first_run:
        logger.info("created the ZenML store in %s (analytics off)", home)
    return home


class _RawStream:
    """sys.stderr as it was before ZenML wrapped its `write`: log lines written here are shown once and not
    copied again into the step logs (ZenML's own handler stores them)."""

    def __init__(self, stream) -> None:  # noqa: ANN001 - a text stream
        self.write = stream.write
        self.flush = stream.flush


def _one_console_handler(level: int, raw_stderr: _RawStream) -> None:
    """Importing ZenML adds its own console handler (on stdout) and resets the root level. When the CLI has
    configured logging already, keep the CLI's stderr handler and level, writing to the unwrapped stderr,
    and drop ZenML's duplicate. ZenML's handler that stores each step's logs in the artifact store stays."""
    from zenml.logger import ZenMLConsoleHandler

    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream is sys.stderr]
    if not ours:
        return
    for handler in ours:
        handler.setStream(raw_stderr)
    for handler in root.handlers[:]:
        if isinstance(handler, ZenMLConsoleHandler):
            root.removeHandler(handler)
    root.setLevel(level)
