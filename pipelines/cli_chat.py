"""`chat`: one message to a served model, the answer on stdout (the quickest way to try what a run deployed).

The endpoint and its key are found as the arena finds them (arena/endpoint.py): `--serve-url`, else SERVE_URL,
else the local server a run left up; the key from SERVE_API_KEY or the local server's state file, never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCENES = Path("data/local/scenes.jsonl")  # its rows carry the writer's brief the adapters were trained with


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="send one message to a served model and print its answer")
    p.add_argument("message", help='what to send, e.g. "[JERRY] So what is the deal with airline food?"')
    p.add_argument("--model", default="seinfeld-dpo", help="served name: seinfeld (SFT) or seinfeld-dpo (default)")
    p.add_argument("--serve-url", default=None, help="OpenAI base URL (default: $SERVE_URL, else the local server)")
    p.add_argument("--system", default=None,
                   help=f"system message (default: the writer's brief of {SCENES}'s first row, when there)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.9)
    p.set_defaults(func=cmd_chat)


def brief(path: Path = SCENES) -> str | None:
    """The system message of the scenes file's first row, None where there is none."""
    try:
        first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    messages = first.get("prompt") if isinstance(first, dict) else None
    if isinstance(messages, list) and messages and messages[0].get("role") == "system":
        return messages[0].get("content")
    return None


def cmd_chat(args: argparse.Namespace) -> int:
    import openai

    from arena.endpoint import resolve_endpoint

    if args.max_tokens < 1:
        print(f"error: --max-tokens must be >= 1; got {args.max_tokens}", file=sys.stderr)
        return 2
    endpoint = resolve_endpoint(args.serve_url)  # ConfigError: exit 2 with the three ways to name one
    system = args.system if args.system is not None else brief()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": args.message}]
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key or "not-needed", max_retries=2,
                           timeout=600)
    try:
        response = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens,
                                                  temperature=args.temperature)
    except openai.NotFoundError:
        served = ", ".join(m.id for m in client.models.list().data)
        print(f"error: {endpoint.public_url} serves no model {args.model!r}; it serves {served}", file=sys.stderr)
        return 2
    except openai.APIConnectionError as e:
        print(f"error: cannot reach {endpoint.public_url} ({endpoint.source}): {e}", file=sys.stderr)
        return 1
    print(response.choices[0].message.content)
    return 0
