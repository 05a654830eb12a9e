"""The one content hash of a LoRA adapter, shared by training (what was trained) and serving (what is live).

It covers exactly the files vLLM and PEFT read, by name and bytes, so a metrics file or a README beside
the adapter does not change it: the hash recorded after training can be compared with the deployed one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_sha256(adapter_dir: str | Path) -> str:
    """Hex sha256 over adapter_config.json and the weights file(s): same files, same hash."""
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, *WEIGHT_FILES):
        path = Path(adapter_dir) / name
        if path.is_file():
            h.update(name.encode() + b"\0")
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            h.update(digest.digest())
    return h.hexdigest()


FOLDER_CHARS = 16  # 64 bits of the hash name an adapter's folder: enough to tell adapters apart


def adapter_folder_name(sha256: str) -> str:
    """The content-addressed folder name of an adapter with this hash ('sha256:' prefix or bare hex)."""
    return sha256.removeprefix("sha256:")[:FOLDER_CHARS]
