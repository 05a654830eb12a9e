"""What a step may ask of the place a run's models are trained and served: the `Target` protocol.

Two implementations: `targets.local.LocalTarget` (a local kit, a working folder, the local vLLM) and
`targets.modal.ModalTarget` (the training and serving apps, the volume). The steps call these and never ask
which one they hold, so a third target (another cloud, another server) is one new module here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from serving.records import DeployRecord
    from stages.generate import GenerateSettings
    from steps.records import AdapterRef
    from targets.spec import Operations, TargetSpec


class Target(Protocol):
    spec: TargetSpec

    def sampling_endpoint(self, settings: GenerateSettings, adapter: AdapterRef | None,
                          ops: Operations) -> tuple[GenerateSettings, str | None]:
        """`settings` pointed at a server that answers `settings.model` (the SFT model; with `adapter`, that adapter
        as the DPO model name, beside SFT), and the key it wants (None: the engine reads SERVE_API_KEY)."""

    def upload(self, train: Path, val: Path) -> str:
        """Put the split where training reads it; returns that place (a content-addressed folder)."""

    def uploads_in_place(self, paths: list[str]) -> bool:
        """The folders `upload` returned still hold their files (the upload step's cache token)."""

    def train(self, data_path: str, overrides: dict[str, Any]) -> AdapterRef:
        """DPO-train on the split at `data_path` (resumably); the adapter stays where training wrote it."""

    def adapter_in_place(self, path: str, sha256: str) -> bool:
        """The adapter files at `path` are still the ones with this content hash."""

    def serve(self, adapters: Mapping[str, AdapterRef], ops: Operations) -> tuple[DeployRecord, bool]:
        """Serve SFT and each of `adapters` under its name (the DPO model, a later round's previous one), check
        each answers from those files, and keep what served before for `rollback`. Returns the record and whether
        the live server was kept."""

    def deployment(self) -> DeployRecord | None:
        """The record of what is live (the last successful `serve` or rollback), or None."""

    def deployment_in_place(self, record: DeployRecord) -> bool:
        """What `record` describes is still serving (the deploy step's cache token)."""

    def api_key(self) -> str | None:
        """The key the served endpoint wants (None: the engine reads SERVE_API_KEY)."""

    def rollback(self, rejected: DeployRecord, ops: Operations) -> str:
        """Put back what served before `rejected` (a failed A/B gate); says what serves now."""
