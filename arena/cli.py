"""`arena` and `arena export` subcommands of `python -m pipelines.dpo` (Gradio is imported only to serve)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_VOTES = Path("data/runs/arena/votes.jsonl")
LIMIT_FLAGS = {  # ArenaLimits field -> what its flag limits
    "samples_per_minute": "rounds one session may sample in any minute",
    "samples_per_session": "rounds one session may sample in all",
    "votes_per_minute": "votes one session may cast in any minute",
    "votes_per_session": "votes one session may cast in all",
    "samples_per_minute_all": "rounds all sessions together may sample in any minute (a script can open any "
                              "number of sessions: this bounds the endpoint's load)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from arena.endpoint import DEFAULT_STATE_DIR
    from arena.limits import MAX_TOKENS, ArenaLimits
    from infra.names import NAMES

    arena = subparsers.add_parser(
        "arena",
        help="compare the SFT and DPO models blind in a web page; each vote is an A/B result and a preference pair",
        description="Serve the A/B arena: a scene box, both models streaming side by side in a random order, four "
        "vote buttons and the running tally. The endpoint is --serve-url, else $SERVE_URL (key in "
        "$SERVE_API_KEY), else the local vLLM that `deploy --local` left running. "
        "`arena export` turns the votes into preference rows for `split` and `train`.",
    )
    arena.add_argument("--serve-url", default=None, help="OpenAI base URL (ending in /v1) of the server")
    arena.add_argument("--port", type=int, default=7860, help="port of the page (0 = a free one)")
    arena.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 to share on a network)")
    arena.add_argument("--votes", metavar="FILE", type=Path, default=DEFAULT_VOTES,
                       help="the votes file (appended to)")
    arena.add_argument("--held-out", type=Path, default=None,
                       help="prompts for the 'random held-out prompt' button: a split's val.jsonl or a prompts "
                       "file (default: data/sample/prompts.jsonl)")
    arena.add_argument("--baseline", default=NAMES.sft_model_name, help="served name of the SFT model")
    arena.add_argument("--challenger", default=NAMES.dpo_model_name, help="served name of the DPO model")
    arena.add_argument("--temperature", type=float, default=0.9, help="default sampling temperature")
    arena.add_argument("--max-tokens", type=int, default=256,
                       help=f"default most tokens per answer (1 to {MAX_TOKENS}, the most the page allows)")
    arena.add_argument("--wake-after", type=float, default=5.0,
                       help="seconds without a first token before the page says the model is waking")
    arena.add_argument("--timeout", type=float, default=600.0,
                       help="seconds a request may wait for the server (a cold Modal endpoint takes minutes)")
    arena.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                       help="where `deploy --local` keeps the local server's record and key")
    limits = arena.add_argument_group("limits", "what one browser session, and all together, may ask of the "
                                      "endpoint; a click over a limit is refused with a message on the page")
    defaults = ArenaLimits()
    for name, what in LIMIT_FLAGS.items():
        limits.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(defaults, name),
                            metavar="N", help=f"{what} (default: %(default)s)")
    arena.set_defaults(func=_serve)
    sub = arena.add_subparsers(dest="arena_command", metavar="{export}", required=False)
    export = sub.add_parser("export", help="turn decided votes into TRL preference rows {prompt, chosen, rejected}",
                            description="Write OUT/preferences.jsonl (one row per left/right vote, the voter's "
                            "pick as chosen) and OUT/export.json (counts, ties and both-bad votes, the tally). "
                            "Then: `split --preferences OUT/preferences.jsonl --out DIR`.")
    export.add_argument("--votes", dest="export_votes", metavar="FILE", type=Path, default=DEFAULT_VOTES,
                        help="the votes file")
    export.add_argument("--out", type=Path, required=True, help="output folder")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from arena.export import export_votes
    from engine.errors import ConfigError

    try:
        result = export_votes(args.export_votes, args.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.render())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from arena.duel import Sampling
    from arena.endpoint import resolve_endpoint
    from arena.limits import ArenaLimits
    from arena.scenes import load_scenes
    from arena.votes import VoteLog
    from engine.errors import ConfigError

    try:  # the flags first: a wrong value says so before anything is looked up or opened
        sampling = Sampling(temperature=args.temperature, max_tokens=args.max_tokens)
        limits = ArenaLimits(**{name: getattr(args, name) for name in LIMIT_FLAGS})
        endpoint = resolve_endpoint(args.serve_url, state_dir=args.state_dir)
        scenes = load_scenes(args.held_out)
        votes = VoteLog(args.votes)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from arena.page import Arena, ArenaSettings, build_page, serve  # imports Gradio (seconds)

    try:
        settings = ArenaSettings(baseline=args.baseline, challenger=args.challenger, sampling=sampling,
                                 wake_after_s=args.wake_after, timeout_s=args.timeout, limits=limits)
    except ConfigError as e:
        votes.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    arena = Arena(endpoint, scenes, votes, settings)
    page = build_page(arena)
    port = args.port or _free_port(args.host)
    _warm_up(arena)
    try:
        url = serve(page, args.host, port)
        print(json.dumps({"url": url, "endpoint": endpoint.public_url, "endpoint_from": endpoint.source,
                          "votes": str(votes.path), "held_out": str(scenes.path)}), flush=True)
        logger.info("the arena is at %s (Ctrl-C stops it)", url)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        arena.close_client()
        page.close()
        votes.close()
    return 0


def _warm_up(arena) -> None:
    """Ask the endpoint for both models in the background: a cold Modal endpoint starts waking now, and the
    terminal says early when a model is not served."""
    from serving.readiness import ReadinessOptions, check_ready

    s, endpoint = arena.settings, arena.endpoint

    def target() -> None:
        options = ReadinessOptions(timeout_s=s.timeout_s, api_key=endpoint.api_key or "not-needed")
        try:
            check_ready(endpoint.base_url, [s.baseline, s.challenger], options)
        except Exception as e:  # advisory only: the page shows each request's own failure
            logger.warning("the endpoint %s is not ready for the arena (%s: %s); the page will show what each "
                           "request gets", endpoint.public_url, type(e).__name__, e)
        else:
            logger.info("the endpoint %s serves %s and %s", endpoint.public_url, s.baseline, s.challenger)

    threading.Thread(target=target, name="arena-warm-up", daemon=True).start()


def _free_port(host: str) -> int:
    from serving.local_vllm import free_port

    return free_port(host)
