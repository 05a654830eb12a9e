"""`python -m testserver.loadtest`: measure the test server's throughput and CPU cost per request.

Starts a server subprocess, drives it with a plain aiohttp client (the cheapest client there is) at a
fixed concurrency, and reports requests/s and the server's CPU milliseconds per request (from
/proc/PID/stat, so it holds even when client and server share the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from testserver.process import start_server


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _drive(url: str, requests: int, concurrency: int, body: dict[str, Any]) -> tuple[float, int]:
    import aiohttp

    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer test"}
    left = requests
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, failures
        while left > 0:
            left -= 1
            async with session.post(url + "/chat/completions", data=payload, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200 or len(json.loads(data)["choices"]) != body["n"]:
                    failures += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return time.perf_counter() - started, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testserver.loadtest", description=__doc__)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--prompt-chars", type=int, default=2400, help="size of the user message")
    args = p.parse_args(argv)
    body = {
        "model": "seinfeld",
        "n": args.n,
        "seed": 1,
        "max_tokens": 400,
        "messages": [
            {"role": "system", "content": "You write Seinfeld scenes. " * 30},
            {"role": "user", "content": ("George loses his keys. " * 200)[: args.prompt_chars]},
        ],
    }
    with start_server(latency=args.latency) as srv:
        asyncio.run(_drive(srv.url, min(500, args.requests), args.concurrency, body))  # warm-up
        cpu0 = _cpu_seconds(srv.pid)
        elapsed, failures = asyncio.run(_drive(srv.url, args.requests, args.concurrency, body))
        cpu = _cpu_seconds(srv.pid) - cpu0
        stats = srv.stats(log=False)
    ideal = args.concurrency / args.latency if args.latency else float("inf")
    print(
        json.dumps(
            {
                "requests": args.requests,
                "concurrency": args.concurrency,
                "latency": args.latency,
                "n": args.n,
                "req_per_s": round(args.requests / elapsed, 1),
                "ideal_req_per_s": None if ideal == float("inf") else round(ideal, 1),
                "server_cpu_ms_per_req": round(1000 * cpu / args.requests, 3),
                "server_cpu_share": round(cpu / elapsed, 3),
                "in_flight_max": stats["in_flight_max"],
                "failures": failures,
            }
        )
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
