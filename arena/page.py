"""The arena's Gradio page: a scene, two hidden models streaming side by side, four vote buttons, the tally.

Imported only by `python -m pipelines.dpo arena` (Gradio takes seconds to import). Everything a session
needs lives in `Arena`; the page keeps the round (models, texts) on the server in a per-session `gr.State`,
so the browser never sees which side is which model until it has voted, and never sees the API key.

Gradio makes every event a public API route by default. Here none is: every event is
`api_visibility="private"` (no API docs, refused by gradio_client), the queue is `api_open=False`, and
`ClosedRoutes` answers 404 to the routes that run an event by name (`/gradio_api/call/...`, `/run/...`,
`/api/...`), which Gradio 6.31 still serves for private events. What is left is the page's own route (join
the queue with a session id), which a script can speak as well, so samples and votes are metered per session
and across sessions (arena.limits) and the page says which limit a refused click hit.
"""

import asyncio
import hashlib
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a private arena

import gradio as gr  # noqa: E402
import openai  # noqa: E402

from arena.duel import Answer, Sampling, duel  # noqa: E402
from arena.endpoint import Endpoint  # noqa: E402
from arena.limits import MAX_TOKENS, ArenaLimits, Meter  # noqa: E402
from arena.rounds import Round  # noqa: E402
from arena.scenes import SceneBook  # noqa: E402
from arena.votes import Tally, VoteLog  # noqa: E402
from engine.client import make_client  # noqa: E402
from engine.errors import ConfigError  # noqa: E402

log = logging.getLogger(__name__)

# Plain text and arrows only: emoji need a font that headless and minimal systems often lack.
VOTE_BUTTONS = (("left", "⬅ Left is better"), ("right", "Right is better ➡"), ("tie", "Tie"),
                ("both_bad", "Both bad"))
PHASES = {"waiting": "waiting for the first token…", "waking": "waking the model…", "streaming": "writing…",
          "done": "done", "error": "failed"}
CSS = ".answer textarea {font-family: ui-monospace, monospace; font-size: 0.9em}"
PRIVATE = {"api_visibility": "private"}  # every event: the page's, never an API route
# Routes that run an event by its name (with a fresh session each call): not the page's, so closed.
CLOSED_PREFIXES = ("/gradio_api/call/", "/gradio_api/run/", "/gradio_api/api/")


@dataclass(frozen=True)
class ArenaSettings:
    baseline: str = "seinfeld"
    challenger: str = "seinfeld-dpo"
    sampling: Sampling = Sampling()
    wake_after_s: float = 5.0  # no first token after this long: say the model is waking
    timeout_s: float = 600.0  # per request: how long a cold endpoint may take to answer at all
    concurrency: int = 16  # browser sessions sampling at once
    limits: ArenaLimits = ArenaLimits()  # samples and votes per session and per minute

    def __post_init__(self) -> None:
        if not self.baseline or not self.challenger or self.baseline == self.challenger:
            raise ConfigError(f"the arena compares two different served models; got {self.baseline!r} and "
                              f"{self.challenger!r}")
        if self.wake_after_s <= 0 or self.timeout_s <= self.wake_after_s:
            raise ConfigError(f"need 0 < wake_after_s < timeout_s; got {self.wake_after_s} and {self.timeout_s}")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1; got {self.concurrency}")


class Arena:
    """What every session shares: endpoint, scenes, vote log, settings, one client per event loop."""

    def __init__(self, endpoint: Endpoint, scenes: SceneBook, votes: VoteLog, settings: ArenaSettings,
                 rng: random.Random | None = None):
        self.endpoint, self.scenes, self.votes, self.settings = endpoint, scenes, votes, settings
        self.rng = rng or random.Random()  # scene draws and seeds only; the left/right order uses `secrets`
        self.meter = Meter(settings.limits)
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = make_client(self.endpoint.base_url, self.endpoint.api_key, timeout_s=self.settings.timeout_s,
                                       concurrency=2 * self.settings.concurrency)
            self._client_loop = loop
        return self._client

    def close_client(self) -> None:
        """Close the HTTP client on its own loop (call it while the page's server still runs)."""
        client, loop = self._client, self._client_loop
        self._client = self._client_loop = None
        if client is not None and loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)

    def tally(self) -> Tally:
        return self.votes.tally(self.settings.baseline, self.settings.challenger)


class ClosedRoutes:
    """ASGI middleware: 404 for Gradio's run-by-name routes (CLOSED_PREFIXES); everything else passes."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(CLOSED_PREFIXES):
            from starlette.responses import JSONResponse

            response = JSONResponse({"detail": "not found: the arena has no API; use the page"}, status_code=404)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def serve(page: gr.Blocks, host: str, port: int) -> str:
    """Start the page's web server in a background thread; returns its URL. `page.close()` stops it."""
    from starlette.middleware import Middleware

    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                            ssr_mode=False, css=CSS, footer_links=["gradio", "settings"], mcp_server=False,
                            app_kwargs={"middleware": [Middleware(ClosedRoutes)]})
    return url


def build_page(arena: Arena) -> gr.Blocks:
    s = arena.settings
    with gr.Blocks(title="A/B arena") as page:
        gr.Markdown(
            f"## A/B arena: which continuation is more Seinfeld?\n"
            f"Two models continue the same scene with the same settings, in a random left/right order, names "
            f"hidden until you vote. Endpoint `{arena.endpoint.public_url}` ({arena.endpoint.source}); votes go to "
            f"`{arena.votes.path}`; held-out scenes from `{arena.scenes.path}`."
        )
        round_state = gr.State(None)
        with gr.Row():
            scene = gr.Textbox(label="Scene (the show's writer brief is the system message)", lines=5, scale=4,
                               placeholder="[JERRY] ...\n[GEORGE] ...", elem_id="scene")
            with gr.Column(scale=1, min_width=200):
                sample = gr.Button("Sample both models", variant="primary", elem_id="sample")
                held_out = gr.Button("Random held-out prompt", elem_id="held-out")
        with gr.Accordion("Settings (the same for both models)", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=s.sampling.temperature, step=0.05, label="temperature")
                max_tokens = gr.Slider(16, MAX_TOKENS, value=s.sampling.max_tokens, step=16,
                                       label=f"max tokens (at most {MAX_TOKENS})")
                seed = gr.Number(value=s.sampling.seed, precision=0, label="seed (empty: a new one each round)")
        status = gr.Markdown("Type a scene or draw one, then sample.", elem_id="status")
        with gr.Row(equal_height=True):
            with gr.Column():
                left_name = gr.Markdown("### Left", elem_id="left-name")
                left = gr.Textbox(show_label=False, lines=12, max_lines=24, interactive=False, elem_id="left",
                                  elem_classes="answer")
            with gr.Column():
                right_name = gr.Markdown("### Right", elem_id="right-name")
                right = gr.Textbox(show_label=False, lines=12, max_lines=24, interactive=False, elem_id="right",
                                   elem_classes="answer")
        with gr.Row():
            buttons = {v: gr.Button(label, interactive=False, elem_id=f"vote-{v.replace('_', '-')}")
                       for v, label in VOTE_BUTTONS}
        tally = gr.Markdown(elem_id="tally")

        answer_outputs = [left, right, left_name, right_name, status, *buttons.values(), sample, round_state]

        async def on_sample(text: str, temp: float, tokens: float, seed_value: float | None, request: gr.Request):
            async for update in _sample(arena, text, temp, tokens, seed_value, _session_key(request)):
                yield update

        def on_load():
            return arena.scenes.draw(arena.rng).text, _tally_markdown(arena)

        page.load(on_load, None, [scene, tally], **PRIVATE)
        held_out.click(lambda: arena.scenes.draw(arena.rng).text, None, scene, **PRIVATE)
        sample.click(on_sample, [scene, temperature, max_tokens, seed], answer_outputs, **PRIVATE)
        for vote in buttons:
            buttons[vote].click(_vote_handler(arena, vote), round_state,
                                [left_name, right_name, status, *buttons.values(), tally, round_state], **PRIVATE)
    page.queue(default_concurrency_limit=s.concurrency, api_open=False)  # api_open: no run without the queue
    return page


async def _sample(arena: Arena, text: str, temp: float, tokens: float, seed_value: float | None, session: str):
    """Yield the page's answer outputs while both models stream (see `answer_outputs`).

    Values come from the browser (or a script speaking its route): anything out of bounds is refused with a
    message, before the session's limits are counted."""
    s = arena.settings
    try:
        scene = arena.scenes.scene_for(text or "")
        seed = _whole(seed_value, "seed") if seed_value not in (None, "") else arena.rng.randrange(2**31)
        sampling = Sampling(temperature=float(temp), max_tokens=_whole(tokens, "max tokens"), seed=seed)
    except (ValueError, TypeError, ConfigError) as e:
        yield _answer_outputs(None, f"**Cannot sample:** {e}")
        return
    refused = arena.meter.sample(session)
    if refused:
        log.info("sample refused for session %s: %s", _session_id_of(session), refused)
        yield _refused_outputs(refused)
        return
    rnd = Round.start(scene, s.baseline, s.challenger, sampling, arena.endpoint.public_url)
    log.info("round %s: %s scene, seed %d", rnd.id, scene.source, seed)
    async for left, right in duel(arena.client(), scene.prompt, rnd.models, sampling, wake_after_s=s.wake_after_s):
        rnd.answers = {"left": left, "right": right}
        yield _answer_outputs(rnd, _status(rnd, s.timeout_s), busy=not (left.finished and right.finished))


def _whole(value: Any, what: str) -> int:
    """A whole number from the page (a slider sends floats such as 256.0); ValueError otherwise."""
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"{what} must be a whole number; got {value!r}")
    return int(number)


def _refused_outputs(status: str) -> list[Any]:
    """A sample over a limit: only the status line changes; the last round stays as it was (still votable)."""
    outputs = [gr.skip() for _ in range(5 + len(VOTE_BUTTONS) + 2)]
    outputs[4] = status
    return outputs


def _answer_outputs(rnd: Round | None, status: str, *, busy: bool = False) -> list[Any]:
    answers = rnd.answers if rnd else {}
    texts = [_shown_text(answers.get(side)) for side in ("left", "right")]
    failed = any(a.phase == "error" for a in answers.values())
    names = [_side_title(side, answers.get(side), rnd.model_on(side) if (rnd and failed) else None)
             for side in ("left", "right")]
    votable = bool(rnd and rnd.votable)
    vote_buttons = [gr.update(interactive=votable) for _ in VOTE_BUTTONS]
    return [*texts, *names, status, *vote_buttons, gr.update(interactive=not busy), rnd]


def _shown_text(answer: Answer | None) -> str:
    if answer is None:
        return ""
    if answer.phase == "error":
        return f"{answer.text}\n\n[{answer.error}]" if answer.text else f"[{answer.error}]"
    return answer.text


def _side_title(side: str, answer: Answer | None, model: str | None = None) -> str:
    """'### Left · writing…'; with `model` (after the vote, or when the round failed) the name is shown."""
    title = f"### {side.capitalize()}"
    if model:
        title += f": {model}"
    if answer is not None:
        phase = PHASES[answer.phase]
        if answer.phase == "done" and answer.finish_reason:
            phase += f" ({answer.finish_reason}, {answer.seconds:.1f} s)"
        title += f" · {phase}"
    return title


def _status(rnd: Round, timeout_s: float) -> str:
    answers = list(rnd.answers.values())
    errors = [f"**{side.capitalize()}** ({rnd.model_on(side)}): {a.error}" for side, a in rnd.answers.items()
              if a.phase == "error"]
    if errors:
        return "**The endpoint failed**, so this round cannot be voted on (names shown). " + " ".join(errors)
    if any(a.phase == "waking" for a in answers):
        return (f"**Waking the model**: no token yet. A cold endpoint (Modal scales to zero) takes a few "
                f"minutes to load; waiting up to {timeout_s:g} s.")
    if all(a.finished for a in answers):
        if answers[0].text == answers[1].text:
            return ("Both answers are in and **identical**: a vote counts in the tally but makes no training pair "
                    "(export leaves it out).")
        return "Both answers are in: which one is more Seinfeld? Vote below."
    return "Both models are writing…"


def _vote_handler(arena: Arena, vote: str):
    def on_vote(rnd: Round | None, request: gr.Request):
        if rnd is None or not rnd.votable:
            status = "Nothing to vote on: sample a round first." if rnd is None or rnd.vote is None else \
                "This round already has your vote: sample another one."
            return [gr.update(), gr.update(), status, *[gr.update() for _ in VOTE_BUTTONS], gr.update(), rnd]
        refused = arena.meter.vote(_session_key(request))
        if refused:
            log.info("vote refused for session %s: %s", _session_id(request), refused)
            return [gr.update(), gr.update(), refused, *[gr.update() for _ in VOTE_BUTTONS], gr.update(), rnd]
        record = rnd.vote_record(vote, _session_id(request))
        arena.votes.append(record)
        rnd.vote = vote
        log.info("vote %s in round %s: %s (winner %s)", record["id"], rnd.id, vote, record["winner"])
        names = [_side_title(side, rnd.answers[side], rnd.model_on(side)) for side in ("left", "right")]
        picked = {"left": "Left", "right": "Right", "tie": "a tie", "both_bad": "both bad"}[vote]
        winner = f" ({record['winner']} wins)" if record["winner"] else ""
        status = f"**Vote recorded:** {picked}{winner}. Sample another round."
        return [*names, status, *[gr.update(interactive=False) for _ in VOTE_BUTTONS], _tally_markdown(arena), rnd]

    return on_vote


def _session_key(request: gr.Request | None) -> str:
    """The browser session's id (Gradio's session hash), as the limits count it."""
    return getattr(request, "session_hash", None) or "api"


def _session_id(request: gr.Request | None) -> str:
    """The session as the vote log and the log name it: a hash, never the session's own id."""
    return _session_id_of(_session_key(request))


def _session_id_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _tally_markdown(arena: Arena) -> str:
    t = arena.tally()
    w = t.win_rate.to_dict()

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    return (
        f"**Tally** of {_count(w['total'], 'vote')} in `{arena.votes.path}`: **{t.challenger}** preferred "
        f"{_count(t.wins, 'time')} · **{t.baseline}** preferred {_count(t.losses, 'time')} · "
        f"{_count(t.ties, 'tie')} · {t.both_bad} both bad\n\n"
        f"Win rate of {t.challenger}: **{pct(w['win_rate_all'])}** of all votes, ties and both-bad half "
        f"(95% interval {pct(w['ci95_all'][0])}–{pct(w['ci95_all'][1])}); {pct(w['win_rate_decided'])} of "
        f"{w['decided']} decided (95% interval {pct(w['ci95_decided'][0])}–{pct(w['ci95_decided'][1])}). "
        "Wilson intervals, as in the evaluate stage."
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
