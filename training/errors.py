"""Exceptions of the training package."""

from __future__ import annotations


class TrainingInputError(ValueError):
    """An input of a training run is missing or wrong; raised before any model is loaded.

    The message names the file (and line) or setting at fault and how to fix it.
    """
