"""How long the Modal serving app may take to start, without the Modal import: serving/modal_app.py sets it on
its functions, and the modal profile's preflight (pipelines/preflight.py) waits as long for a cold endpoint."""

from __future__ import annotations

STARTUP_TIMEOUT = 20 * 60  # seconds: a first start downloads ~6.5 GB of weights, then loads and compiles
