"""What a valid prompt is and its stable id: the rules the engine, training and serving share.

Plain Python plus orjson (no engine, torch or ZenML import): it lives in infra/ because both Modal apps
mount infra/ and the training container checks preference rows with these rules (training/data.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

ROLES = frozenset({"system", "user", "assistant"})

def prompt_id(prompt: str | list[dict[str, str]]) -> str:
    """A stable 16-hex-digit id for a prompt: sha256 of its canonical JSON."""
    canonical = orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]



def check_prompt(value: Any) -> str | list[dict[str, str]]:
    """A prompt is a non-empty string or a non-empty list of {role, content} chat messages."""
    if value is None:
        raise ValueError('missing "prompt"')
    if isinstance(value, str):
        if not value.strip():
            raise ValueError('"prompt" is an empty string')
        return value
    if not isinstance(value, list):
        raise ValueError(f'"prompt" must be a string or a list of messages, got {type(value).__name__}')
    if not value:
        raise ValueError('"prompt" is an empty message list')
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ValueError(f'"prompt"[{i}] must be an object with role and content, got {type(message).__name__}')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f'"prompt"[{i}].role must be one of {sorted(ROLES)}, got {role!r}')
        if not isinstance(content, str):
            raise ValueError(f'"prompt"[{i}].content must be a string, got {type(content).__name__}')
    if not any(m["content"].strip() for m in value):
        raise ValueError('"prompt" messages are all empty')
    return [{"role": m["role"], "content": m["content"]} for m in value]
