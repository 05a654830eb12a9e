"""How many GPU replicas the Modal serving app may run, and how many requests each takes: Modal's autoscaler does
the spreading, these are its bounds.

Modal adds a container when the requests in flight per container pass `target_inputs`, up to `max_containers`,
and stops idle ones after `scaledown_window_s`. The app is deployed with the A/B bound (`max_containers`, one GPU
by default: A/B and arena traffic is small, and it bounds the bill); sampling raises the bound to
`sample_max_containers` for its run with Modal's `Function.update_autoscaler` (no redeploy), and the next deploy
returns the app to its static bound. The values travel to `modal deploy` and into the containers as one JSON
variable (`SCALE_VAR`), so the container evaluates the app module with the same bounds.

Standard library only: the serving containers import it (serving/modal_app.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

SCALE_VAR = "NGPT_SERVE_SCALE"  # JSON of ServeScale's fields; unset: the defaults below

# What one replica costs while it runs (Modal's list prices, checked December 2026 on modal.com/pricing; an
# assumption for the forecast, not a measurement): an L4 GPU plus the CPU and memory a vLLM container reserves.
REPLICA_USD_PER_HOUR = 0.80 + 0.20  # the L4 at $0.000222/s, plus ~2 cores and ~16 GiB of memory


class ScaleError(ValueError):
    """A scale setting breaks a rule: the message names it, the value and the fix."""


@dataclass(frozen=True)
class ServeScale:
    """The serving app's replica bounds (the config's `deploy.scale` section)."""

    min_containers: int = field(default=0, metadata={
        "help": "GPU replicas kept up with no traffic (0: scale to zero after scaledown_window_s; each costs "
                "~$1/h while up)"})
    max_containers: int = field(default=1, metadata={
        "help": "most replicas for the A/B and the arena (small traffic; one GPU bounds the bill)"})
    sample_max_containers: int = field(default=8, metadata={
        "help": "most replicas while `generate` samples: Modal adds one when a replica's requests in flight pass "
                "target_inputs"})
    max_inputs: int = field(default=64, metadata={
        "help": "requests one replica takes at once (@modal.concurrent max_inputs); vLLM batches them"})
    target_inputs: int = field(default=48, metadata={
        "help": "requests in flight per replica above which Modal adds a replica (@modal.concurrent target_inputs)"})
    scaledown_window_s: int = field(default=900, metadata={
        "help": "seconds an idle replica stays up before Modal stops it (a cold start costs minutes)"})

    def __post_init__(self) -> None:
        def rule(ok: bool, message: str) -> None:
            if not ok:
                raise ScaleError(message)

        for f in fields(self):
            value = getattr(self, f.name)
            rule(isinstance(value, int) and not isinstance(value, bool),
                 f"deploy.scale.{f.name} must be a whole number, got {value!r}")
        rule(self.min_containers >= 0, f"deploy.scale.min_containers must be >= 0, got {self.min_containers}")
        for name in ("max_containers", "sample_max_containers", "max_inputs", "target_inputs"):
            rule(getattr(self, name) >= 1, f"deploy.scale.{name} must be >= 1, got {getattr(self, name)}")
        rule(self.min_containers <= self.max_containers,
             f"deploy.scale.min_containers ({self.min_containers}) must be <= max_containers ({self.max_containers})")
        rule(self.max_containers <= self.sample_max_containers,
             f"deploy.scale.sample_max_containers ({self.sample_max_containers}) must be >= max_containers "
             f"({self.max_containers}): sampling may use at least the A/B's replicas")
        rule(self.target_inputs <= self.max_inputs,
             f"deploy.scale.target_inputs ({self.target_inputs}) must be <= max_inputs ({self.max_inputs}): Modal "
             "adds replicas before one is full; try target_inputs = 3/4 of max_inputs")
        rule(2 <= self.scaledown_window_s <= 3600,
             f"deploy.scale.scaledown_window_s must be 2-3600 (Modal's range), got {self.scaledown_window_s}")

    @property
    def sample_concurrency(self) -> int:
        """Requests to keep in flight while sampling: every replica the bound allows, each at its target."""
        return self.sample_max_containers * self.target_inputs

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServeScale:
        raw = (os.environ if environ is None else environ).get(SCALE_VAR, "")
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ScaleError(f"{SCALE_VAR} is not JSON ({e}); unset it or set it from ServeScale.to_env()") from e
        known = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) - known:
            raise ScaleError(f"{SCALE_VAR} must be a JSON object with keys from {sorted(known)}, got {raw!r}")
        return cls(**values)
