"""Atomic file writes, the one copy every package uses (the engine's checkpoints, the deploy and round records,
training's run file): a temp file in the same folder, fsync'd, then renamed over the old one. A reader sees the old
file or the new one, never half of either; a crash leaves at most a stray `.<name>.<pid>.tmp` beside it.
In infra/ because both Modal containers mount it (the training app writes its run file with it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path`'s content with `data` atomically. `private`: readable by the owner only (a file with a key)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, *, private: bool = False) -> None:
    """`data` as indented JSON with sorted keys and a final newline, written atomically."""
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), private=private)
