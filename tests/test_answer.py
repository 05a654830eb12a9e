"""The last lines of a run (pipelines/answer.py): the verdict reads the interval right, and no key is printed."""

from __future__ import annotations

import pytest

from pipelines.answer import answer_lines, verdict


def result(low: float, high: float, *, gate: dict | None = None, complete: bool = True) -> dict:
    return {"challenger": "seinfeld-dpo", "baseline": "seinfeld", "wins": 56, "losses": 19, "ties": 8, "judged": 83,
            "win_rate": {"win_rate_all": 0.723, "ci95_all": [low, high]}, "gate": gate, "complete": complete}


@pytest.mark.parametrize(
    ("low", "high", "head"),
    [
        (0.618, 0.808, "seinfeld-dpo beats seinfeld: 72.3% [61.8%, 80.8%] on 83 held-out prompts"),
        (0.45, 0.62, "seinfeld-dpo vs seinfeld: no measurable difference"),  # the interval holds 50%
        (0.2, 0.49, "seinfeld-dpo loses to seinfeld"),
    ],
)
def test_the_verdict_follows_the_interval_not_the_point_estimate(low, high, head):
    assert verdict(result(low, high)).startswith(head)


def test_the_gate_says_whether_dpo_stayed_and_an_incomplete_ab_is_no_verdict():
    kept = verdict(result(0.618, 0.808, gate={"min_win_rate": 0.4, "passed": True}))
    assert kept.endswith("(56 wins, 19 losses, 8 ties; gate 40%: kept)")
    assert "rolled back" in verdict(result(0.2, 0.45, gate={"min_win_rate": 0.5, "passed": False}))
    assert "no verdict yet" in verdict(result(0.2, 0.45, complete=False))


def test_the_lines_say_how_to_try_the_models_and_never_carry_a_key():
    record = {"target": "local", "base_url": "http://127.0.0.1:8123/v1", "base_model": "base",
              "models": ["base", "seinfeld", "seinfeld-dpo"], "api_key": "s3cret"}
    lines = answer_lines(result(0.6, 0.8), {"report": "/x/report.md"}, record)
    text = "\n".join(lines)
    assert lines[0].startswith("seinfeld-dpo beats seinfeld") and "  report: /x/report.md" in lines
    assert "serving seinfeld, seinfeld-dpo at http://127.0.0.1:8123/v1" in text
    assert 'chat --model seinfeld-dpo "' in text and "deploy --local --stop" in text and "arena" in text
    assert "s3cret" not in text
    modal = answer_lines(None, {}, {**record, "target": "modal", "base_url": "https://x.modal.run/v1"})
    assert "SERVE_URL=https://x.modal.run/v1" in "\n".join(modal) and "$SERVE_API_KEY" in "\n".join(modal)


def test_chat_sends_one_message_and_prints_the_answer(capsys, monkeypatch):
    from pipelines.dpo import main
    from testserver import start_server

    monkeypatch.delenv("SERVE_URL", raising=False)
    with start_server(model_markers={"seinfeld-dpo": "PREFER-ME"}) as server:
        assert main(["chat", "--serve-url", server.url, "[JERRY] Hi."]) == 0
        answer = capsys.readouterr().out
        assert main(["chat", "--serve-url", server.url, "--model", "seinfeld-ppo", "[JERRY] Hi."]) == 2
    assert "PREFER-ME" in answer  # seinfeld-dpo answered (the test server marks that model's texts)
    assert "serves no model 'seinfeld-ppo'" in capsys.readouterr().err
