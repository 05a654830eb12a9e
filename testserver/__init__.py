"""A local OpenAI-compatible server for tests and benchmarks: Seinfeld-like samples, a rule-based judge,
latency and fault injection, runtime control (POST /_control) and server-side stats (GET /_stats).

- `start_server(**options) -> ServerProcess`: a subprocess (`python -m testserver`), for benchmarks.
- `async with run_in_process(**options) as server`: on the running loop, for unit tests.
- `ServerOptions`: every option (the CLI flags and the /_control keys), validated.
- `FaultKind`: the faults; `COMPLETION_PATTERN`: the completion blocks the judge responder parses.
"""

from testserver.app import FakeOpenAIServer
from testserver.faults import FaultKind
from testserver.options import COMPLETION_PATTERN, DEFAULT_MODELS, ServerOptions
from testserver.process import ServerError, ServerProcess, run_in_process, start_server
from testserver.responders import AVOID_MARKER, PREFER_MARKER

__all__ = [
    "AVOID_MARKER",
    "COMPLETION_PATTERN",
    "DEFAULT_MODELS",
    "FakeOpenAIServer",
    "FaultKind",
    "PREFER_MARKER",
    "ServerError",
    "ServerOptions",
    "ServerProcess",
    "run_in_process",
    "start_server",
]
