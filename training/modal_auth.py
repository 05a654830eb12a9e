"""Fail fast, with the fix, when Modal credentials are missing: never a hang or a buried gRPC error."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FIX = "run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"


class ModalCredentialsError(RuntimeError):
    """No usable Modal token."""


def modal_config_path() -> Path:
    """Where the Modal client reads its token (the same rule as modal.config, evaluated now)."""
    return Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")


def has_modal_credentials() -> bool:
    """True when the env holds a token pair or a profile in the Modal config file does."""
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    path = modal_config_path()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    wanted = os.environ.get("MODAL_PROFILE")
    for name, profile in profiles.items():
        if not isinstance(profile, dict) or (wanted and name != wanted):
            continue
        if profile.get("token_id") and profile.get("token_secret"):
            return True
    return False


def require_modal_credentials() -> None:
    """Raise ModalCredentialsError before any Modal call when no token is configured."""
    if not has_modal_credentials():
        raise ModalCredentialsError(
            f"Modal credentials not found (no MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, no token in "
            f"{modal_config_path()}): {FIX}."
        )


@contextmanager
def modal_auth_errors() -> Iterator[None]:
    """Re-raise Modal's AuthError (an expired or revoked token) with the fix."""
    import modal.exception

    try:
        yield
    except modal.exception.AuthError as e:
        raise ModalCredentialsError(f"Modal refused the credentials ({e}): {FIX}.") from e
