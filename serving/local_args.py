"""Flags of the local server, shared by `python -m serving.local_server` and `pipelines.dpo serve-local`.

Kept apart from the server so the CLI can build its parser without importing aiohttp.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_adapter(text: str) -> tuple[str, Path]:
    """`NAME=DIR` -> (NAME, Path(DIR)); argparse type for --adapter."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter wants NAME=DIR (e.g. seinfeld=/path/to/adapter); got {text!r}")
    return name, Path(path)


def add_server_arguments(parser: argparse.ArgumentParser, *, base_required: bool = True) -> None:
    """The server's flags (shared with `python -m pipelines.dpo serve-local`)."""
    parser.add_argument("--base", type=Path, required=base_required, help="base model folder")
    parser.add_argument("--adapter", type=parse_adapter, action="append", default=[], metavar="NAME=DIR",
                        help="a LoRA adapter to serve under NAME (repeatable)")
    parser.add_argument("--served-model-name", default=None, help="name of the base model (default: --base)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (announced on stdout)")
    parser.add_argument("--ready-file", type=Path, default=None, help="write the ready JSON here once listening")
    parser.add_argument("--max-model-len", type=int, default=2048, help="context length (prompt + completion)")
    parser.add_argument("--default-max-tokens", type=int, default=256,
                        help="completion length when a request gives no max_tokens")
