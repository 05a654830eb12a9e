"""Which OpenAI-compatible server the arena asks, and with which key.

In order: `--serve-url`, then `SERVE_URL` (the Modal endpoint), then the local vLLM that
`python -m pipelines.dpo deploy --local` (or a pipeline run) left running. The key is `SERVE_API_KEY` from
the environment, or the local server's own key from its state file. The key is kept out of `repr`, logs,
the page and the vote file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from engine.errors import ConfigError

DEFAULT_STATE_DIR = Path("data/runs/serving")


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # the OpenAI base URL, ending in /v1
    source: str  # "--serve-url", "SERVE_URL" or "local deploy record"
    api_key: str | None = field(default=None, repr=False)

    @property
    def public_url(self) -> str:
        """The URL without user info, query or fragment: safe to show and to record."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_endpoint(serve_url: str | None = None, *, state_dir: Path = DEFAULT_STATE_DIR,
                     env: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint to use; ConfigError listing the three ways to name one when there is none."""
    from serving.local_deploy import local_api_key
    from serving.records import load_record

    env = os.environ if env is None else env
    local = load_record(Path(state_dir), "local")
    local_url = local.base_url.rstrip("/") if local else None
    key = env.get("SERVE_API_KEY") or None
    for url, source in ((serve_url, "--serve-url"), (env.get("SERVE_URL"), "SERVE_URL")):
        if url:
            url = url.rstrip("/")
            _check_url(url, source)
            if key is None and url == local_url:
                key = local_api_key(Path(state_dir))
            return Endpoint(url, source, key)
    if local_url:
        return Endpoint(local_url, "local deploy record", local_api_key(Path(state_dir)) or key)
    raise ConfigError(
        "no model endpoint: pass --serve-url URL (its /v1 base), set SERVE_URL (the Modal endpoint, key in "
        f"SERVE_API_KEY), or start the local server with `python -m pipelines.dpo deploy --local` (looked for "
        f"its record in {state_dir})"
    )


def _check_url(url: str, source: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source} must be an http(s) URL such as http://127.0.0.1:8000/v1; got {url!r}")
