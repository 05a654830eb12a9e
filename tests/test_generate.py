"""The generate stage end to end over real HTTP against the local fault-injecting server."""

from __future__ import annotations

import signal
import socket

import orjson
import pytest

from tests.helpers import SAMPLE, read_jsonl, run_cli, start_cli, wait_for_lines, write_prompts
from testserver import start_server


@pytest.fixture
def server():
    with start_server(latency=0.02) as s:
        yield s


def gen_args(server, prompts, out, *extra: str) -> list[str]:
    return ["generate", "--prompts", str(prompts), "--out", str(out), "--serve-url", server.url,
            "--no-progress", *extra]


def assert_complete(out, ids: list[str], n: int = 3) -> list[dict]:
    rows = read_jsonl(out / "completions.jsonl")
    got = [r["id"] for r in rows]
    assert len(got) == len(set(got)), "a row was written twice"
    assert set(got) == set(ids)
    for r in rows:
        assert len(r["completions"]) == n and all(c.strip() for c in r["completions"])
    return rows


def test_sample_prompts_three_completions_each(server, tmp_path):
    out = tmp_path / "gen"
    result = run_cli(*gen_args(server, SAMPLE, out, "--seed", "7"))
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out / "completions.jsonl")
    assert len(rows) == 25
    assert all(len(set(r["completions"])) == 3 for r in rows)
    assert all(r["reference"].startswith("[") for r in rows)  # the SFT completion is kept
    summary = orjson.loads((out / "completions.summary.json").read_bytes())
    assert summary["succeeded"] == 25 and summary["failed"] == 0 and summary["exit_code"] == 0
    assert summary["tokens_out"] > 0
    # one request per prompt asks for all n samples
    assert server.stats()["requests"] == 25
    # rerun: everything is done, nothing is requested
    again = run_cli(*gen_args(server, SAMPLE, out, "--seed", "7"))
    assert again.returncode == 0 and server.stats()["requests"] == 25
    assert len(read_jsonl(out / "completions.jsonl")) == 25


@pytest.mark.parametrize("kill_after", [1, 17, 45])
def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, kill_after):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 60)
    out = tmp_path / "gen"
    with start_server(latency=0.15, jitter=0.1) as server:
        proc = start_cli(*gen_args(server, prompts, out, "--concurrency", "8"))
        wait_for_lines(out / "completions.jsonl", kill_after, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = read_jsonl(out / "completions.jsonl")
        assert len(partial) < 60
        result = run_cli(*gen_args(server, prompts, out, "--concurrency", "8"))
        assert result.returncode == 0, result.stderr
    rows = assert_complete(out, ids)
    raw = (out / "completions.jsonl").read_bytes()
    assert raw.endswith(b"\n") and all(orjson.loads(line) for line in raw.splitlines())
    assert [r["id"] for r in rows[: len(partial)]] == [r["id"] for r in partial]  # append-only


def test_twenty_percent_retryable_faults_every_row_completes(tmp_path):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 40)
    out = tmp_path / "gen"
    kinds = {"429": 1, "500": 1, "503": 1, "drop": 1, "malformed": 1, "no_choices": 1, "hang": 1}
    with start_server(fault_rate=0.2, fault_kinds=kinds, retry_after=0.05, hang_seconds=5, seed=3) as server:
        result = run_cli(*gen_args(server, prompts, out, "--concurrency", "8", "--timeout", "0.5"))
        stats = server.stats(log=False)
    assert result.returncode == 0, result.stderr
    assert_complete(out, ids)
    summary = orjson.loads((out / "completions.summary.json").read_bytes())
    assert summary["retries"] > 0 and summary["failed"] == 0
    assert stats["requests"] == 40 + summary["retries"]


def test_non_retryable_failures_become_error_records_and_a_rerun_retries_only_them(tmp_path):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 20)
    bad = {"row 3?": "400", "row 11?": "400", "row 17?": "422"}  # per-row refusals (401/403/404 stop the run)
    out = tmp_path / "gen"
    with start_server() as server:
        server.control(fail_matching=[{"substring": s, "kind": k} for s, k in bad.items()])
        first = run_cli(*gen_args(server, prompts, out))
        assert first.returncode == 1
        errors = read_jsonl(out / "completions.errors.jsonl")
        assert sorted(e["line"] for e in errors) == [4, 12, 18]
        assert [e["status"] for e in sorted(errors, key=lambda e: e["line"])] == [400, 400, 422]
        assert all(e["attempts"] == 1 for e in errors)  # not retried
        assert "rerun" in first.stderr or "resume with" in first.stderr
        server.reset()  # healthy now
        second = run_cli(*gen_args(server, prompts, out))
        assert second.returncode == 0, second.stderr
        assert server.stats()["requests"] == 3  # exactly the failed rows
    assert_complete(out, ids)
    assert read_jsonl(out / "completions.errors.jsonl") == []


def test_one_log_line_per_cool_down_not_per_429_in_flight(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 16)
    with start_server(latency=0.2, retry_after=1.0) as server:  # all 8 first requests are in flight together
        server.control(fail_next=[{"kind": "429", "count": 8}])
        result = run_cli(*gen_args(server, prompts, tmp_path / "gen", "--concurrency", "8"))
        limited = [e for e in server.stats()["log"] if e["status"] == 429]
    assert result.returncode == 0, result.stderr
    assert len(limited) == 8
    assert result.stderr.count("rate limited (HTTP 429): all workers pause") == 1, result.stderr


def test_retry_after_pauses_every_worker(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 30)
    out = tmp_path / "gen"
    with start_server(latency=0.05, retry_after=1.0) as server:
        server.control(fail_next=[{"kind": "429", "count": 1}])
        result = run_cli(*gen_args(server, prompts, out, "--concurrency", "8"))
        log = server.stats()["log"]
    assert result.returncode == 0, result.stderr
    arrivals = sorted(log, key=lambda e: e["t"])
    limited = [e for e in arrivals if e["status"] == 429]
    assert len(limited) == 1
    t429 = limited[0]["t"]
    # Requests already on the wire when the client read the 429 (a few ms) may still arrive; after that,
    # no worker may send anything until the Retry-After second has passed.
    gaps = [e["t"] - t429 for e in arrivals if e["t"] > t429]
    in_pause = [g for g in gaps if 0.02 < g < 0.95]
    assert not in_pause, f"requests arrived {in_pause} s after the 429 (Retry-After 1 s)"
    assert len([g for g in gaps if g >= 0.95]) > 10  # the run went on afterwards


def test_bad_rows_strict_fails_before_any_request_and_lenient_rejects_them(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 6)
    lines = prompts.read_text().splitlines()
    lines.insert(2, '{"prompt": 42}')
    lines.insert(5, "{oops")
    lines.append(lines[0])  # a duplicate prompt
    prompts.write_text("\n".join(lines) + "\n")
    with start_server() as server:
        strict = run_cli(*gen_args(server, prompts, tmp_path / "strict", "--strict"))
        assert strict.returncode == 2
        assert f"{prompts}:3: \"prompt\" must be a string or a list of messages, got int" in strict.stderr
        assert f"{prompts}:6: invalid JSON" in strict.stderr
        assert server.stats()["requests"] == 0
        out = tmp_path / "lenient"
        lenient = run_cli(*gen_args(server, prompts, out))
        assert lenient.returncode == 0, lenient.stderr
        assert server.stats()["requests"] == 6
    rejects = read_jsonl(out / "completions.rejects.jsonl")
    assert [(r["line"], r["problem"][:12]) for r in rejects] == [
        (3, '"prompt" mus'), (6, "invalid JSON"), (9, "duplicate pr")]
    assert len(read_jsonl(out / "completions.jsonl")) == 6


def test_fewer_choices_and_empty_samples_are_topped_up(tmp_path):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 5)
    out = tmp_path / "gen"
    with start_server() as server:
        # row 1: asked 3, got 1; asked 2, got 1; asked 1, got a blank one; asked 1, got it
        server.control(fail_next=[{"kind": "fewer_choices", "count": 2}, {"kind": "empty", "count": 1}])
        result = run_cli(*gen_args(server, prompts, out, "--concurrency", "1"))
        assert result.returncode == 0, result.stderr
        requests = server.stats()["requests"]
    rows = assert_complete(out, ids)
    assert [r["requests"] for r in rows] == [4, 1, 1, 1, 1]
    assert sum(r["requests"] for r in rows) == requests
    summary = orjson.loads((out / "completions.summary.json").read_bytes())
    assert summary["extra"]["empty_samples"] > 0 and summary["failed"] == 0


def test_sigint_stops_scheduling_finishes_in_flight_and_resume_completes(tmp_path):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 40)
    out = tmp_path / "gen"
    with start_server(latency=0.3) as server:
        proc = start_cli(*gen_args(server, prompts, out, "--concurrency", "4"))
        wait_for_lines(out / "completions.jsonl", 4, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert "Ctrl-C again" in stderr and "resume with" in stderr
        summary = orjson.loads((out / "completions.summary.json").read_bytes())
        assert summary["interrupted"] and summary["unfinished"] > 0
        sent = server.stats()["requests"]
        written = len(read_jsonl(out / "completions.jsonl"))
        assert written == sent  # every request that was in flight was allowed to finish and was saved
        result = run_cli(*gen_args(server, prompts, out, "--concurrency", "4"))
        assert result.returncode == 0, result.stderr
    assert_complete(out, ids)


def test_changed_settings_are_refused_unless_fresh(server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 3)
    out = tmp_path / "gen"
    assert run_cli(*gen_args(server, prompts, out)).returncode == 0
    refused = run_cli(*gen_args(server, prompts, out, "--temperature", "0.5"))
    assert refused.returncode == 2 and "temperature: was 0.9, now 0.5" in refused.stderr
    fresh = run_cli(*gen_args(server, prompts, out, "--temperature", "0.5", "--fresh"))
    assert fresh.returncode == 0
    assert list((out / "previous").glob("completions-*/completions.jsonl"))


def test_a_second_sigint_exits_at_once(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 20)
    out = tmp_path / "gen"
    with start_server(latency=0.05) as server:
        proc = start_cli(*gen_args(server, prompts, out, "--concurrency", "2", "--grace", "60"))
        wait_for_lines(out / "completions.jsonl", 2, proc)
        server.control(latency=30)  # in-flight rows would now take 30 s to finish
        import time

        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5
    assert proc.returncode == 130 and "exiting now" in stderr
    raw = (out / "completions.jsonl").read_bytes()
    assert raw.endswith(b"\n") and all(orjson.loads(line) for line in raw.splitlines())


def test_generate_starts_without_zenml_modal_or_torch(server, tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 2)
    code = (
        "import sys\n"
        "for name in ('zenml', 'modal', 'torch', 'transformers', 'trl'):\n"
        "    sys.modules[name] = None  # importing any of them now raises ImportError\n"
        "from pipelines.dpo import main\n"
        f"sys.exit(main({gen_args(server, prompts, tmp_path / 'out')!r}))\n"
    )
    import subprocess
    import sys

    from tests.helpers import ROOT

    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "out" / "completions.jsonl")) == 2


def test_rps_caps_request_starts_per_second(tmp_path):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 25)
    out = tmp_path / "gen"
    with start_server() as server:  # no latency: without a cap, 8 workers would send all 25 at once
        result = run_cli(*gen_args(server, prompts, out, "--concurrency", "8", "--rps", "10"))
        arrivals = sorted(e["t"] for e in server.stats()["log"])
    assert result.returncode == 0, result.stderr
    assert_complete(out, ids)
    assert len(arrivals) == 25
    # starts are spread ~0.1 s apart: any one-second window at the server holds 10, or 11 when network
    # jitter brings two arrivals closer together; 25 requests take more than 2 s
    assert max(sum(1 for t in arrivals if a <= t < a + 1.0) for a in arrivals) <= 11
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] > 0.08  # the median gap is the 0.1 s spacing, not a burst
    assert arrivals[-1] - arrivals[0] > 2.0


def test_a_live_progress_bar_on_a_terminal_with_log_lines_above_it(tmp_path):
    import os
    import pty
    import re
    import subprocess

    from tests.helpers import ROOT, cli, env

    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 20)
    with start_server(latency=0.3, retry_after=1.0) as server:  # ~4 s of work: the bar (0.5 s period) redraws
        primary, secondary = pty.openpty()
        args = ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "gen"), "--serve-url", server.url,
                "--concurrency", "2"]
        proc = subprocess.Popen(cli(*args), cwd=ROOT, env={**env(), "COLUMNS": "200"}, stdin=secondary,
                                stdout=secondary, stderr=secondary)
        os.close(secondary)
        chunks: list[bytes] = []
        limited = False
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            chunks.append(data)
            if not limited and b"rows/s" in b"".join(chunks):  # the bar is up: now a 429 for both rows in flight
                server.control(fail_next=[{"kind": "429", "count": 2}])
                limited = True
        proc.wait(timeout=60)
        os.close(primary)
    raw = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, raw
    # What the terminal shows, line by line: cursor moves and erases removed, \r and \n end a line.
    screen = [s.strip() for s in re.split(r"[\r\n]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)) if s.strip()]
    frames = [s for s in screen if "generate " in s and "/20" in s and "rows/s" in s]
    assert len(frames) >= 3  # redrawn in place while running
    assert "generate 20/20 100%" in frames[-1] and "ETA" in frames[0] and "retries 2" in frames[-1]
    logged = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ")
    limited = [s for s in screen if "rate limited" in s]
    # One per cool-down: 1, or 2 when the second 429 hit a request sent after the first pause ended (timing;
    # test_one_log_line_per_cool_down_not_per_429_in_flight pins the count down with 429s surely in flight).
    assert 1 <= len(limited) <= 2, limited
    assert all(logged.match(s) for s in limited), limited  # whole, on a line of its own: not run into the bar


def test_first_use_errors_name_the_fix_exit_2_and_create_nothing(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 3)
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cases = {
        "folder": (["generate", "--prompts", str(tmp_path), "--serve-url", closed], "is a folder, not a JSONL file"),
        "no_url": (["generate", "--prompts", str(prompts)], "pass --serve-url URL or set SERVE_URL"),
        "refused": (["generate", "--prompts", str(prompts), "--serve-url", closed, "--max-attempts", "2"],
                    f"connection refused by {closed}"),
        "judge_folder": (["judge", "--completions", str(tmp_path), "--backend", "reference"], "is a folder"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / f"out-{name}"
        done = run_cli(*args, "--out", str(out), "--no-progress")  # helpers.env() drops SERVE_URL
        assert (done.returncode, message in done.stderr) == (2, True), (name, done.stderr[-1500:])
        assert "Traceback" not in done.stderr and "timed out" not in done.stderr
        assert not out.exists(), name


def test_a_prompt_too_long_for_the_served_context_is_rejected_before_any_request(tmp_path):
    prompts = tmp_path / "p.jsonl"
    ids = write_prompts(prompts, 3)
    long_prompt = [{"role": "user", "content": "[JERRY] " + "yada " * 400}]  # 2,008 chars: at least ~334 tokens
    with open(prompts, "ab") as f:
        f.write(orjson.dumps({"prompt": long_prompt}) + b"\n")
    out = tmp_path / "gen"
    with start_server(max_model_len=380) as server:  # /v1/models says max_model_len 380, as vLLM does
        result = run_cli(*gen_args(server, prompts, out, "--max-tokens", "64"))
        sent = server.stats()["requests"]
        strict = run_cli(*gen_args(server, prompts, tmp_path / "strict", "--max-tokens", "64", "--strict"))
        assert server.stats()["requests"] == sent  # --strict refuses before sending anything
    assert result.returncode == 0, result.stderr
    assert sent == 3  # the long row was never sent
    assert_complete(out, ids)
    rejects = read_jsonl(out / "completions.rejects.jsonl")
    assert [(r["file"], r["line"]) for r in rejects] == [(str(prompts), 4)]
    assert "prompt too long for seinfeld: at least ~334 tokens" in rejects[0]["problem"]
    assert "max_model_len 380" in rejects[0]["problem"] and f"{prompts}:4: prompt too long" in result.stderr
    assert strict.returncode == 2 and f"{prompts}:4: prompt too long" in strict.stderr
