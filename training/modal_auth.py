"""Fail fast, with the fix, when Modal credentials are missing: never a hang or a buried gRPC error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from infra.modal_credentials import modal_credentials_problem

FIX = "run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)"


class ModalCredentialsError(RuntimeError):
    """No usable Modal token."""


def has_modal_credentials() -> bool:
    """True when a Modal token is configured (infra.modal_credentials: the one rule, shared with serving)."""
    return modal_credentials_problem() is None


def require_modal_credentials() -> None:
    """Raise ModalCredentialsError before any Modal call when no token is configured."""
    problem = modal_credentials_problem()
    if problem:
        raise ModalCredentialsError(problem)


@contextmanager
def modal_auth_errors() -> Iterator[None]:
    """Re-raise Modal's AuthError (an expired or revoked token) with the fix."""
    import modal.exception

    try:
        yield
    except modal.exception.AuthError as e:
        raise ModalCredentialsError(f"Modal refused the credentials ({e}): {FIX}.") from e
