"""The arena without a browser: the vote log, export to preference rows, scenes, endpoint choice, the duel."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from arena.duel import Sampling, duel
from arena.endpoint import Endpoint, resolve_endpoint
from arena.export import export_votes
from arena.rounds import Round
from arena.scenes import SAMPLE_PROMPTS, load_scenes
from arena.votes import VoteLog
from engine.client import make_client
from engine.errors import ConfigError
from engine.rows import prompt_id
from pipelines.dpo import main
from stages.evaluate.winrate import WinRate
from stages.split import split_preferences
from tests.arena_helpers import FakeEndpoint, read_lines
from training.data import load_preference_rows

ROOT = Path(__file__).resolve().parents[1]
BRIEF = json.loads(SAMPLE_PROMPTS.read_text().splitlines()[0])["prompt"][0]["content"]


def vote(vote: str, *, left: str = "seinfeld", right: str = "seinfeld-dpo", scene: str = "[JERRY] Hi.",
         texts: tuple[str, str] = ("[GEORGE] left text", "[ELAINE] right text"), vote_id: str | None = None) -> dict:
    """A vote record as the page writes it (built by Round, so the test follows the real format)."""
    book = load_scenes()
    rnd = Round(book.scene_for(scene), "seinfeld", "seinfeld-dpo", Sampling(seed=7), "http://x/v1", left, right)
    from arena.duel import Answer

    rnd.answers = {"left": Answer(left, texts[0], "done", "stop"), "right": Answer(right, texts[1], "done", "stop")}
    record = rnd.vote_record(vote, "session-a")
    if vote_id:
        record["id"] = vote_id
    return record


def write_votes(path: Path, records: list[dict], tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


# -- the vote log ---------------------------------------------------------------------------------------------


def test_vote_log_repairs_a_torn_tail_on_start_and_appends_complete_lines(tmp_path):
    path = tmp_path / "votes.jsonl"
    write_votes(path, [vote("left"), vote("right")], tail=b'{"id": "torn", "vote": "le')  # a kill mid-write
    log = VoteLog(path)
    assert log.repaired and "votes.jsonl:3" in log.repaired
    assert path.read_bytes().endswith(b"\n") and len(read_lines(path)) == 2
    log.append(vote("tie"))
    log.append(vote("both_bad"))
    lines = read_lines(path)
    assert [r["vote"] for r in lines] == ["left", "right", "tie", "both_bad"]
    assert all(list(r)[0] == "id" for r in lines)  # "id" first, as the engine writes checkpoints
    tally = log.tally("seinfeld", "seinfeld-dpo")
    # left = seinfeld (the baseline) won; right = seinfeld-dpo (the challenger) won
    assert (tally.wins, tally.losses, tally.ties, tally.both_bad) == (1, 1, 1, 1)
    assert tally.win_rate == WinRate(1, 1, 2)
    with pytest.raises(ValueError, match="starts with 'id'"):
        log.append({"vote": "left", "id": "x"})
    log.close()


def test_vote_log_cuts_a_torn_line_left_by_another_process_before_appending(tmp_path):
    path = tmp_path / "votes.jsonl"
    log = VoteLog(path)
    log.append(vote("left"))
    with open(path, "ab") as other:  # another arena process died in the middle of its write
        other.write(b'{"id": "half a vo')
    log.append(vote("right"))
    assert [r["vote"] for r in read_lines(path)] == ["left", "right"]
    log.close()


WRITER = textwrap.dedent("""
    import sys, threading
    sys.path[:0] = [{root!r}]
    from tests.test_arena_units import vote
    from arena.votes import VoteLog
    log = VoteLog({path!r})
    def cast(n):
        for i in range(n):
            log.append(vote(("left", "right", "tie", "both_bad")[i % 4], texts=("x" * 3000, "y" * 5000)))
    threads = [threading.Thread(target=cast, args=(25,)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    log.close()
""")


def test_vote_log_is_safe_for_concurrent_sessions_and_processes(tmp_path):
    """Two processes x four threads append 8 kB votes at once: every line lands whole, none twice."""
    path = tmp_path / "votes.jsonl"
    script = WRITER.format(root=str(ROOT), path=str(path))
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    lines = read_lines(path)  # every line parses
    assert len(lines) == 200 and len({r["id"] for r in lines}) == 200
    tally = VoteLog(path).tally("seinfeld", "seinfeld-dpo")
    # each thread casts 7 left (the baseline's win), 6 right, 6 tie, 6 both bad
    assert (tally.wins, tally.losses, tally.ties, tally.both_bad) == (48, 56, 48, 48)


# -- export ---------------------------------------------------------------------------------------------------


def test_export_makes_pairs_of_decided_votes_and_counts_ties_and_both_bad(tmp_path):
    votes = tmp_path / "votes.jsonl"
    left_dpo = vote("left", left="seinfeld-dpo", right="seinfeld", texts=("[KRAMER] dpo", "[JERRY] sft"))
    right_sft = vote("right", left="seinfeld-dpo", right="seinfeld", texts=("[KRAMER] dpo 2", "[JERRY] sft 2"))
    same = vote("left", texts=("[JERRY] same", "[JERRY] same"))  # nothing to learn from
    records = [left_dpo, right_sft, vote("tie"), vote("both_bad"), vote("both_bad"), same, dict(left_dpo)]
    write_votes(votes, records, tail=b'{"id": "being written')
    result = export_votes(votes, tmp_path / "out")
    assert (result.votes, result.pairs, result.ties, result.both_bad) == (6, 2, 1, 2)
    assert result.duplicates == 1 and result.torn_tail
    assert result.left_out == {'"chosen" equals "rejected": the pair teaches nothing': 1}
    rows = read_lines(result.preferences)
    first, second = rows
    assert first["id"] == left_dpo["id"] and first["prompt"] == left_dpo["prompt"]
    assert first["chosen"] == [{"role": "assistant", "content": "[KRAMER] dpo"}]
    assert first["rejected"] == [{"role": "assistant", "content": "[JERRY] sft"}]
    assert first["arena"]["vote"] == "left" and first["arena"]["chosen_model"] == "seinfeld-dpo"
    assert first["arena"]["shown"] == {"left": "seinfeld-dpo", "right": "seinfeld"}
    assert second["chosen"][0]["content"] == "[JERRY] sft 2" and second["arena"]["rejected_model"] == "seinfeld-dpo"
    summary = json.loads(result.summary.read_text())
    (tally,) = summary["tallies"]
    # the challenger won once (left_dpo) and lost twice (right_sft, and `same` picked seinfeld on the left)
    assert tally["win_rate"] == WinRate(1, 2, 3).to_dict() and tally["both_bad"] == 2
    assert summary["pairs"] == 2 and summary["ties"] == 1 and summary["both_bad"] == 2


def test_exported_rows_go_through_split_and_load_as_training_data(tmp_path):
    """`split` accepts the rows, and the training loader reads both sides (train_dpo's own check)."""
    votes = tmp_path / "votes.jsonl"
    scenes = [s.text for s in load_scenes().held_out]
    write_votes(votes, [vote("left" if i % 2 else "right", scene=scenes[i], texts=(f"[JERRY] a{i}", f"[GEORGE] b{i}"))
                        for i in range(len(scenes))])
    result = export_votes(votes, tmp_path / "out")
    assert result.pairs == len(scenes)
    split = split_preferences(result.preferences, tmp_path / "split", val_fraction=0.2)
    assert split.n_train and split.n_val and split.n_train + split.n_val == len(scenes)
    for path in (split.train_path, split.val_path):
        rows, row_format = load_preference_rows(path)
        assert row_format == "conversational" and rows[0]["prompt"][0] == {"role": "system", "content": BRIEF}


@pytest.mark.e2e  # a DPO step on the exported pairs (~16 s): in `make slow`
def test_exported_pairs_train_a_dpo_step(tmp_path, tiny_kit):
    """train_dpo (the CPU path, 1 step) trains on an export of arena votes, split by `split`."""
    from training.config import DPOTrainConfig
    from training.dpo import train_dpo

    votes = tmp_path / "votes.jsonl"
    scenes = [s.text for s in load_scenes().held_out][:10]
    write_votes(votes, [vote("left", scene=text, texts=(f"[JERRY] yes {i}", f"[GEORGE] no {i}"))
                        for i, text in enumerate(scenes)])
    split = split_preferences(export_votes(votes, tmp_path / "out").preferences, tmp_path / "split", 0.2)
    config = DPOTrainConfig.cpu_test(
        fp32=True, max_steps=1, data_dir=str(split.train_path.parent), base_model=str(tiny_kit.base_dir),
        sft_adapter=str(tiny_kit.sft_adapter_dir), output_dir=str(tmp_path / "ckpt"), adapter_out=str(tmp_path / "a"),
    )
    result = train_dpo(config)
    assert result.adapter_dir.is_dir()


def test_export_names_a_damaged_line_and_the_cli_exits_2(tmp_path, capsys):
    votes = tmp_path / "votes.jsonl"
    write_votes(votes, [vote("left")])
    with votes.open("ab") as f:
        f.write(b"not json\n")
    write_votes(votes.with_name("more.jsonl"), [vote("tie")])
    votes.write_bytes(votes.read_bytes() + votes.with_name("more.jsonl").read_bytes())
    with pytest.raises(ConfigError, match=r"votes.jsonl:2: not a JSON vote"):
        export_votes(votes, tmp_path / "out")
    assert main(["arena", "export", "--votes", str(votes), "--out", str(tmp_path / "out")]) == 2
    assert "votes.jsonl:2" in capsys.readouterr().err
    assert main(["arena", "export", "--votes", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2


def test_export_cli_prints_counts_and_the_tally(tmp_path, capsys):
    votes = tmp_path / "votes.jsonl"
    write_votes(votes, [vote("right"), vote("tie")])
    assert main(["arena", "export", "--votes", str(votes), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 votes -> 1 preference pairs (1 ties, 0 both bad" in out
    assert "seinfeld-dpo vs seinfeld: 1 wins, 0 losses, 1 ties" in out


# -- scenes and the endpoint ----------------------------------------------------------------------------------


def test_a_held_out_scene_keeps_its_prompt_and_a_typed_one_gets_the_show_brief(tmp_path):
    book = load_scenes()
    assert book.path == SAMPLE_PROMPTS and len(book.held_out) == 25 and book.brief == BRIEF
    first = json.loads(SAMPLE_PROMPTS.read_text().splitlines()[0])
    held = book.scene_for(book.held_out[0].text + "\n")
    assert held.prompt == first["prompt"] and held.source == "held-out"
    typed = book.scene_for("[KRAMER] Giddy-up.")
    assert typed.source == "typed"
    assert typed.prompt == [{"role": "system", "content": BRIEF}, {"role": "user", "content": "[KRAMER] Giddy-up."}]
    with pytest.raises(ValueError, match="scene box is empty"):
        book.scene_for("  ")
    # a split's val.jsonl (preference rows) works as the held-out file
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"prompt": first["prompt"], "chosen": [{"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "assistant", "content": "b"}]}) + "\n")
    assert load_scenes(val).held_out[0].prompt == first["prompt"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenes(tmp_path / "missing.jsonl")


def test_endpoint_comes_from_the_flag_then_serve_url_then_the_local_record(tmp_path):
    from serving.records import DeployRecord

    state = tmp_path / "serving"
    with pytest.raises(ConfigError, match="--serve-url.*SERVE_URL.*deploy --local"):
        resolve_endpoint(None, state_dir=state, env={})
    state.mkdir()
    record = DeployRecord("local", "http://127.0.0.1:9", "http://127.0.0.1:9/v1", "tiny", [], [], 1.0, "now")
    (state / "local_deployment.json").write_text(json.dumps(record.to_dict()))
    (state / "local_server.json").write_text(json.dumps({"pid": 1, "api_key": "local-key"}))
    local = resolve_endpoint(None, state_dir=state, env={})
    assert (local.base_url, local.api_key) == ("http://127.0.0.1:9/v1", "local-key")
    assert local.source == "local deploy record"
    modal = resolve_endpoint(None, state_dir=state, env={"SERVE_URL": "https://x.modal.run/v1/",
                                                         "SERVE_API_KEY": "modal-key"})
    assert (modal.base_url, modal.api_key, modal.source) == ("https://x.modal.run/v1", "modal-key", "SERVE_URL")
    flag = resolve_endpoint("http://127.0.0.1:9/v1", state_dir=state, env={"SERVE_URL": "https://x.modal.run/v1"})
    assert (flag.source, flag.api_key) == ("--serve-url", "local-key")  # the local server's own key
    assert "key" not in repr(modal) and "modal-key" not in repr(modal)
    with_user = Endpoint("https://user:pw@host.example:8443/v1?token=t", "--serve-url", "k")
    assert with_user.public_url == "https://host.example:8443/v1"
    with pytest.raises(ConfigError, match="http"):
        resolve_endpoint("ftp://nowhere", state_dir=state, env={})


# -- the duel -------------------------------------------------------------------------------------------------


async def _run_duel(endpoint: FakeEndpoint, sampling: Sampling, **kwargs) -> list[list]:
    client = make_client(endpoint.base_url, "test-key", timeout_s=10, concurrency=2)
    prompt = [{"role": "system", "content": BRIEF}, {"role": "user", "content": "[JERRY] Hi."}]
    try:
        return [snap async for snap in duel(client, prompt, ["seinfeld", "seinfeld-dpo"], sampling, **kwargs)]
    finally:
        await client.close()


def test_duel_streams_both_models_with_the_same_settings_and_says_when_one_is_waking():
    with FakeEndpoint({"seinfeld": "ok", "seinfeld-dpo": ("slow", 1.0)}) as endpoint:
        snaps = asyncio.run(_run_duel(endpoint, Sampling(temperature=0.7, max_tokens=32, seed=11), wake_after_s=0.3))
    phases = [[a.phase for a in snap] for snap in snaps]
    assert ["done", "waking"] in phases  # the slow one was shown waking while the other had finished
    final = snaps[-1]
    assert [a.phase for a in final] == ["done", "done"]
    assert final[0].text.endswith("(seinfeld)") and final[1].text.endswith("(seinfeld-dpo)")
    assert final[1].first_token_s >= 1.0 and final[0].finish_reason == "stop"
    bodies = [r["body"] for r in endpoint.requests]
    same = [{k: v for k, v in b.items() if k != "model"} for b in bodies]
    assert same[0] == same[1] and same[0]["seed"] == 11 and same[0]["temperature"] == 0.7
    assert same[0]["max_completion_tokens"] == 32 and same[0]["stream"] is True


def test_duel_turns_endpoint_failures_into_messages():
    with FakeEndpoint({"seinfeld": "500"}) as endpoint:  # seinfeld-dpo is not served: 404
        snaps = asyncio.run(_run_duel(endpoint, Sampling()))
    sft, dpo = snaps[-1]
    assert sft.phase == dpo.phase == "error"
    assert "the endpoint answered 500: the GPU caught fire (injected)" in sft.error
    assert "does not serve the model 'seinfeld-dpo' (404)" in dpo.error
    refused = FakeEndpoint({})
    refused.base_url = "http://127.0.0.1:9/v1"  # nothing listens there
    sft, _ = asyncio.run(_run_duel(refused, Sampling()))[-1]
    assert "cannot reach the endpoint" in sft.error
    with pytest.raises(ConfigError, match="temperature"):
        Sampling(temperature=3)
    assert prompt_id(vote("left")["prompt"]) == vote("left")["prompt_id"]


def test_the_arena_command_without_an_endpoint_exits_2_naming_the_ways_to_give_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SERVE_URL", raising=False)
    assert main(["arena", "--state-dir", str(tmp_path), "--votes", str(tmp_path / "votes.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--serve-url" in err and "SERVE_URL" in err and "deploy --local" in err


# -- what a visitor (or a script) may ask of the endpoint -----------------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand (the limits' minute windows without waiting a minute)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def page_arena(tmp_path: Path, endpoint: FakeEndpoint, clock: Clock | None = None, **limits):
    """The page's Arena (as `arena` builds it) on a fake endpoint, with these limits and clock."""
    from arena.limits import ArenaLimits, Meter
    from arena.page import Arena, ArenaSettings

    settings = ArenaSettings(sampling=Sampling(max_tokens=16), limits=ArenaLimits(**limits))
    arena = Arena(Endpoint(endpoint.base_url, "test", "test-key"), load_scenes(), VoteLog(tmp_path / "votes.jsonl"),
                  settings)
    if clock is not None:
        arena.meter = Meter(settings.limits, clock=clock)
    return arena


def sample_rounds(arena, calls: list[tuple]) -> list[list]:
    """The page's sample handler for each (session, max tokens) in turn: the last outputs of each call."""
    from arena.page import _sample

    text = arena.scenes.held_out[0].text

    async def run() -> list[list]:
        last = []
        for session, tokens in calls:
            outputs = [update async for update in _sample(arena, text, 0.9, tokens, None, session)]
            last.append(outputs[-1])
        if arena._client is not None:
            await arena._client.close()
        return last

    return asyncio.run(run())


STATUS, ROUND = 4, -1  # where the status line and the round are in the sample handler's outputs


def _http(url: str, body: dict | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_script_calling_the_pages_events_through_gradios_api_routes_is_refused(tmp_path):
    """Every route that runs an event by name answers 404, gradio_client finds no endpoint, the model server
    gets no request; the page's own route (join the queue) still works."""
    from gradio_client import Client

    from arena.page import build_page, serve
    from serving.local_vllm import free_port

    with FakeEndpoint({"seinfeld": "ok", "seinfeld-dpo": "ok"}) as endpoint:
        arena = page_arena(tmp_path, endpoint)
        page = build_page(arena)
        try:
            url = serve(page, "127.0.0.1", free_port())
            names = [fn.api_name for fn in page.fns.values()]
            assert "on_sample" in names
            scene = arena.scenes.held_out[0].text
            for name in names:
                data = [scene, 0.9, 16, 1] if name == "on_sample" else []
                for route in (f"call/{name}", f"call/v2/{name}", f"run/{name}", f"api/{name}"):
                    status, body = _http(f"{url}gradio_api/{route}", {"data": data})
                    assert status == 404, (route, status, body[:200])
            client = Client(url, verbose=False)
            assert client.view_api(print_info=False, return_format="dict")["named_endpoints"] == {}
            with pytest.raises(ValueError, match="Cannot find a function"):
                client.predict(scene, 0.9, 16, 1, api_name="/on_sample")
            assert endpoint.requests == []  # nothing reached the model server
            # the page's own route: join the queue in a session, as the browser does (the load event)
            load = next(i for i, fn in page.fns.items() if fn.api_name == "on_load")
            status, _ = _http(f"{url}gradio_api/queue/join", {"data": [], "fn_index": load, "session_hash": "s1"})
            assert status == 200
            _, events = _http(f"{url}gradio_api/queue/data?session_hash=s1")
            assert '"msg":"process_completed"' in events and '"success":true' in events
        finally:
            page.close()
            arena.votes.close()


def test_a_session_gets_n_samples_a_minute_and_all_sessions_a_shared_cap(tmp_path):
    import gradio as gr

    clock = Clock()
    with FakeEndpoint({"seinfeld": "ok", "seinfeld-dpo": "ok"}) as endpoint:
        arena = page_arena(tmp_path, endpoint, clock, samples_per_minute=2, samples_per_minute_all=3,
                           samples_per_session=3)
        first = sample_rounds(arena, [("a", 16), ("a", 16), ("a", 16)])
        assert [isinstance(out[ROUND], Round) for out in first] == [True, True, False]
        assert "Slow down" in first[2][STATUS] and "2 rounds in the last minute" in first[2][STATUS]
        assert "sample again in 60 s" in first[2][STATUS] and "--samples-per-minute" in first[2][STATUS]
        # only the status line changes: the round on the page (unvoted here) stays, texts and buttons too
        assert [out for i, out in enumerate(first[2]) if i != STATUS] == [gr.skip()] * (len(first[2]) - 1)
        assert len(endpoint.requests) == 4  # two rounds of two models; the refused one sent nothing
        # another session has its own count, but all sessions together share one
        second = sample_rounds(arena, [("b", 16), ("c", 16)])
        assert isinstance(second[0][ROUND], Round) and not isinstance(second[1][ROUND], Round)
        assert "The arena is busy" in second[1][STATUS] and "--samples-per-minute-all" in second[1][STATUS]
        clock.now += 61  # a minute later the window has room again, up to the session's total
        third = sample_rounds(arena, [("a", 16), ("a", 16)])
        assert isinstance(third[0][ROUND], Round) and not isinstance(third[1][ROUND], Round)
        assert "Limit reached" in third[1][STATUS] and "--samples-per-session" in third[1][STATUS]
        assert len(endpoint.requests) == 8
        arena.votes.close()


def test_votes_are_capped_per_session_and_a_refused_vote_is_not_recorded(tmp_path):
    from types import SimpleNamespace

    from arena.page import _vote_handler

    clock = Clock()
    with FakeEndpoint({"seinfeld": "ok", "seinfeld-dpo": "ok"}) as endpoint:
        arena = page_arena(tmp_path, endpoint, clock, votes_per_minute=1, votes_per_session=2)
        rounds = [out[ROUND] for out in sample_rounds(arena, [("a", 16)] * 4)]
    session = SimpleNamespace(session_hash="a")
    vote = _vote_handler(arena, "tie")
    assert "Vote recorded" in vote(rounds[0], session)[2]
    refused = vote(rounds[1], session)[2]
    assert "Slow down" in refused and "vote again in 60 s" in refused and rounds[1].vote is None
    clock.now += 60
    assert "Vote recorded" in vote(rounds[1], session)[2]
    clock.now += 60
    assert "Limit reached" in vote(rounds[2], session)[2] and "--votes-per-session" in vote(rounds[3], session)[2]
    assert len(read_lines(arena.votes.path)) == 2
    arena.votes.close()


@pytest.mark.parametrize(("values", "problem"), [
    ({"samples_per_minute": 0}, "samples_per_minute must be a whole number >= 1; got 0"),
    ({"votes_per_session": 2.5}, "votes_per_session must be a whole number >= 1; got 2.5"),
    ({"samples_per_minute_all": True}, "samples_per_minute_all must be a whole number >= 1; got True"),
])
def test_limits_are_validated(values, problem):
    from arena.limits import ArenaLimits

    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        ArenaLimits(**values)


def test_max_tokens_over_the_bound_is_refused_on_the_page_and_for_the_flag(tmp_path, monkeypatch, capsys):
    from arena.limits import MAX_TOKENS
    from arena.page import build_page

    assert Sampling(max_tokens=MAX_TOKENS).max_tokens == MAX_TOKENS == 1024
    with pytest.raises(ConfigError, match="max_tokens must be a whole number from 1 to 1024.*got 2048"):
        Sampling(max_tokens=2048)
    with FakeEndpoint({"seinfeld": "ok", "seinfeld-dpo": "ok"}) as endpoint:
        arena = page_arena(tmp_path, endpoint, samples_per_minute=1)
        outs = sample_rounds(arena, [("a", 2048), ("a", float("inf")), ("a", "many"), ("a", None), ("a", 16.5)])
        assert all(out[ROUND] is None and out[STATUS].startswith("**Cannot sample:**") for out in outs)
        assert "from 1 to 1024" in outs[0][STATUS] and "whole number" in outs[4][STATUS]
        assert endpoint.requests == []
        assert isinstance(sample_rounds(arena, [("a", 1024)])[0][ROUND], Round)  # refusals used up nothing
        blocks = build_page(arena).blocks.values()
        (slider,) = [b for b in blocks if str(getattr(b, "label", "")).startswith("max tokens")]
        assert slider.maximum == MAX_TOKENS
        arena.votes.close()
    monkeypatch.delenv("SERVE_URL", raising=False)
    # the flag is checked before the endpoint is looked for
    assert main(["arena", "--max-tokens", "2048", "--state-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "max_tokens must be a whole number from 1 to 1024" in err and "--serve-url" not in err
    assert main(["arena", "--samples-per-minute", "0", "--state-dir", str(tmp_path / "none")]) == 2
    assert "samples_per_minute must be a whole number >= 1" in capsys.readouterr().err


def test_the_left_right_order_comes_from_secrets_not_random(tmp_path, monkeypatch):
    import random
    import secrets

    def not_random(*args, **kwargs):
        raise AssertionError("the side order must not come from the random module")

    for name in ("sample", "shuffle", "choice", "random"):
        monkeypatch.setattr(random.Random, name, not_random)
    draws: list[int] = []

    def randbelow(n: int) -> int:
        draws.append(n)
        return [0, 1, 1, 0][len(draws) - 1]

    monkeypatch.setattr(secrets, "randbelow", randbelow)
    scene = load_scenes().held_out[0]
    orders = [Round.start(scene, "seinfeld", "seinfeld-dpo", Sampling(), "http://x/v1").models for _ in range(2)]
    assert orders == [("seinfeld", "seinfeld-dpo"), ("seinfeld-dpo", "seinfeld")] and draws == [2, 2]
    with FakeEndpoint({"seinfeld": "ok", "seinfeld-dpo": "ok"}) as endpoint:  # the page's rounds too
        arena = page_arena(tmp_path, endpoint)
        rounds = [out[ROUND] for out in sample_rounds(arena, [("a", 16), ("a", 16)])]
        arena.votes.close()
    assert [r.models for r in rounds] == [("seinfeld-dpo", "seinfeld"), ("seinfeld", "seinfeld-dpo")]
    assert draws == [2, 2, 2, 2]
