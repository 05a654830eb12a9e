"""The one error type of a deploy: it names the part that failed."""

from __future__ import annotations

# The parts of a deploy, in the order they run.
PARTS = ("credentials", "deploy", "startup", "adapter missing", "request")


class DeployError(RuntimeError):
    """A deploy failed; `part` says where: one of PARTS."""

    def __init__(self, part: str, message: str) -> None:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}; got {part!r}")
        super().__init__(f"{part}: {message}")
        self.part = part
        self.detail = message
