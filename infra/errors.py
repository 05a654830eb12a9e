"""The project's one base error for bad settings, shared by the engine, the pipeline and the training container
(infra/ is mounted in both Modal containers). Its message states the rule, the value and the fix; the CLI ends it
with exit 2 and that message, never a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is invalid or a run cannot start: the message names the rule, the value and the fix."""
