"""Is a Modal token configured? The one check, without the network, for training, serving and the preflight."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

LOGIN_HINT = (
    "Log in with `modal token new` (opens a browser and writes ~/.modal.toml), "
    "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET."
)


def modal_credentials_problem(env: Mapping[str, str] | None = None) -> str | None:
    """Why Modal would refuse us for lack of a token (None when one is configured). No network.

    Mirrors modal.config: MODAL_TOKEN_ID / MODAL_TOKEN_SECRET override the active profile of
    ~/.modal.toml (or $MODAL_CONFIG_PATH; profile $MODAL_PROFILE, else the one marked active, else
    "default"); MODAL_OAUTH_REFRESH_TOKEN is the other accepted login.
    """
    env = os.environ if env is None else env
    if env.get("MODAL_OAUTH_REFRESH_TOKEN"):
        return None
    path = Path(env.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml").expanduser()
    profile: dict = {}
    if path.is_file():
        try:
            config = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            return f"{path} is not readable TOML ({e}). {LOGIN_HINT}"
        name = env.get("MODAL_PROFILE") or next(
            (k for k, v in config.items() if isinstance(v, dict) and v.get("active") is True), "default"
        )
        profile = config.get(name) if isinstance(config.get(name), dict) else {}
    token_id = env.get("MODAL_TOKEN_ID") or profile.get("token_id")
    token_secret = env.get("MODAL_TOKEN_SECRET") or profile.get("token_secret")
    if token_id and token_secret:
        return None
    missing = [n for n, v in (("token id", token_id), ("token secret", token_secret)) if not v]
    return f"no Modal credentials ({' and '.join(missing)} missing; looked in the environment and {path}). {LOGIN_HINT}"
