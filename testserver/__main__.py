"""`python -m testserver [options]`: serve until SIGTERM/SIGINT, after printing one JSON ready line.

The ready line on stdout: {"url": "http://127.0.0.1:PORT/v1", "port": PORT, "pid": PID}.
`--config JSON` sets any option (the /_control keys); the other flags override it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from testserver.app import FakeOpenAIServer
from testserver.options import ServerOptions


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _kinds(value: str) -> dict[str, float]:
    """ "429:2,500,drop" -> {"429": 2.0, "500": 1.0, "drop": 1.0}."""
    out: dict[str, float] = {}
    for item in _csv(value):
        kind, _, weight = item.partition(":")
        out[kind] = float(weight) if weight else 1.0
    return out


def _fail_next(value: str) -> dict[str, Any]:
    """ "KIND[:COUNT[:MODEL]]" -> {"kind", "count", "model"}."""
    kind, _, rest = value.partition(":")
    count, _, model = rest.partition(":")
    return {"kind": kind, "count": int(count) if count else 1, "model": model or None}


def _fail_matching(value: str) -> dict[str, Any]:
    """ "KIND:SUBSTRING" -> {"kind", "substring"} (the substring may contain colons)."""
    kind, sep, substring = value.partition(":")
    if not sep or not substring:
        raise argparse.ArgumentTypeError(f"expected KIND:SUBSTRING, got {value!r}")
    return {"kind": kind, "substring": substring}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m testserver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=json.loads, default={}, help="JSON object of options (any /_control key)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--models", type=_csv, help="comma-separated model ids")
    p.add_argument("--latency", type=float, help="seconds before every answer")
    p.add_argument("--jitter", type=float, help="extra uniform random seconds in [0, jitter]")
    p.add_argument("--model-latency", type=_kinds, help="MODEL:SECONDS,... overriding --latency per model")
    p.add_argument("--max-in-flight", type=int, help="429 for requests arriving while this many are in flight")
    p.add_argument("--sample-lines", type=lambda v: [int(x) for x in v.split(",")], help="MIN,MAX lines per sample")
    p.add_argument("--error-latency", type=float, help="seconds before an error status or a drop")
    p.add_argument("--seed", type=int)
    p.add_argument("--fault-rate", type=float, help="probability of a random fault per request")
    p.add_argument("--fault-kinds", type=_kinds, help="KIND[:WEIGHT],... e.g. 429:2,500,drop")
    p.add_argument("--fault-models", type=_csv, help="models the random faults apply to")
    p.add_argument("--fail-next", type=_fail_next, action="append", help="KIND[:COUNT[:MODEL]], repeatable")
    p.add_argument("--fail-matching", type=_fail_matching, action="append", help="KIND:SUBSTRING, repeatable")
    p.add_argument("--retry-after", type=float, help="Retry-After seconds on 429 (negative: no header)")
    p.add_argument("--hang-seconds", type=float)
    p.add_argument("--cache-share", type=float)
    p.add_argument("--cache-min-tokens", type=int)
    p.add_argument("--completion-pattern", help="regex with named groups id and body")
    p.add_argument("--mark-choices", action="store_true", default=None)
    p.add_argument("--log-size", type=int)
    p.add_argument("--replicas-max", type=int, help="Modal-like replicas behind the URL, at most this many")
    p.add_argument("--replicas-min", type=int, help="replicas always up (warm at start)")
    p.add_argument("--replica-max-inputs", type=int, help="requests one replica runs at once")
    p.add_argument("--replica-target-inputs", type=int, help="in-flight requests per replica the autoscaler aims for")
    p.add_argument("--replica-startup-s", type=float, help="seconds before a new replica serves")
    p.add_argument("--replica-prefill-s", type=float, help="fixed seconds of each request on a replica")
    p.add_argument("--replica-token-latency-s", type=float, help="seconds per generated token of a request")
    p.add_argument("--replica-scaledown-s", type=float, help="idle seconds before a replica stops")
    p.add_argument("--tpm-limit", type=int, help="tokens per minute per model (429 beyond, as OpenAI)")
    p.add_argument("--rpm-limit", type=int, help="requests per minute per model (429 beyond, as OpenAI)")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (no orphan if the parent dies)"
    )
    return p


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    values: dict[str, Any] = dict(args.config)
    for key, value in vars(args).items():
        if key in ("config", "log_level", "exit_on_stdin_eof") or value is None:
            continue
        values[key] = None if key == "retry_after" and value < 0 else value
    return ServerOptions.from_mapping(values)


async def serve(options: ServerOptions, *, exit_on_stdin_eof: bool = False) -> None:
    server = FakeOpenAIServer(options)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_on_stdin_eof:
        fd = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(fd, 4096):  # EOF: the parent closed the pipe or died
                loop.remove_reader(fd)
                stop.set()

        loop.add_reader(fd, on_stdin)
    sys.stdout.write(json.dumps({"url": server.url, "port": server.port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        options = options_from_args(args)
    except ValueError as e:
        print(f"testserver: invalid options: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop  # optional: about a third less CPU per request
    except ImportError:
        asyncio.run(serve(options, exit_on_stdin_eof=args.exit_on_stdin_eof))
    else:
        uvloop.run(serve(options, exit_on_stdin_eof=args.exit_on_stdin_eof))
    return 0


if __name__ == "__main__":
    sys.exit(main())
