"""README guarantees that no other test pinned down: each test here fails when one line of the code that keeps the
guarantee is broken (found by mutation testing: the named one-line change passed every other fast test).

- supersede: a changed row's old record is fsynced into the superseded file before it leaves its file, and a
  skipped row's record is moved too (else the row is paid again on every later run)
- --min-confidence: a kill between the filter's two rewrites never leaves a pair in neither file, and a pair left in
  both is resolved; with --swap-check the lower of the two confidences is compared
- fingerprint: every difference of stage or settings refuses a resume (a dropped setting, the judge's prompt version)
- resume by content: fields the stage ignores, key order, and records from before input keys are never paid again
- views: --limit, and one record per row
- place tokens: an upload under a new token is checked on its own folders
- batch mode: a kill right after `batches.create` makes no second batch; --max-cost with --swap-check; an answer cut
  at the token cap fails its row; a batch is marked collected only after its records are fsynced; an answer for a
  row changed while its batch ran is not used; --finish-live waits for every batch to be collected
"""

from __future__ import annotations

import os

import orjson
import pytest

import stages.judge.filters as filters
from engine.checkpoint import Checkpoint, fingerprint
from engine.errors import ConfigError
from engine.rows import prompt_id
from stages.judge.filters import apply_min_confidence, passes
from tests.helpers import read_jsonl
from tests.test_resume import judge, judged, rows, write
from testserver import run_in_process


def _ids(path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


# -- supersede --------------------------------------------------------------------------------------------------


def test_supersede_makes_the_moved_records_durable_before_replacing_each_file(tmp_path, monkeypatch):
    """Each file is replaced by its filtered copy only once that copy and the superseded file holding the moved
    lines are on disk (written and fsynced): a crash then leaves a record in both places, never in neither."""
    ck = Checkpoint(tmp_path, "preferences")
    ck.results.write_bytes(b'{"id":"aa","input":"k1","v":1}\n{"id":"bb","input":"k2","v":2}\n')
    ck.skipped.write_bytes(b'{"id":"cc","input":"k3","reason":"x"}\n{"id":"dd","input":"k4","reason":"y"}\n')
    fsynced: list[str] = []
    replaces: list[tuple[str, bytes, list[str]]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):  # what the disk holds at this moment, and what was fsynced before it
        replaces.append((str(dst), ck.superseded.read_bytes(), list(fsynced)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    assert ck.supersede({"aa", "cc"}) == 2
    assert [dst for dst, _, _ in replaces] == [str(ck.results), str(ck.skipped)]
    moved = {str(ck.results): b'{"id":"aa"', str(ck.skipped): b'{"id":"cc"'}
    for dst, superseded_on_disk, synced_before in replaces:
        assert moved[dst] in superseded_on_disk, f"{dst} replaced before its moved line reached the superseded file"
        assert str(ck.superseded) in synced_before and dst + ".tmp" in synced_before, synced_before
    assert _ids(ck.superseded) == ["aa", "cc"] and _ids(ck.results) == ["bb"] and _ids(ck.skipped) == ["dd"]


# -- --min-confidence ---------------------------------------------------------------------------------------------


def _pair(pid: str, confidence: int) -> dict:
    return {"id": pid, "input": "k", "prompt": "p", "chosen": "c", "rejected": "r", "judge": {"confidence": confidence}}


class _Killed(BaseException):
    """The process ends between the filter's two rewrites."""


@pytest.mark.parametrize("threshold", [4, None])  # 4: "lo" moves out to the skipped file; None: "back" moves back in
def test_a_kill_between_the_filters_two_rewrites_never_leaves_a_pair_in_neither_file(tmp_path, monkeypatch, threshold):
    ck = Checkpoint(tmp_path, "preferences")
    if threshold is None:  # the state a run with --min-confidence 4 left
        low = {**_pair("back", 3), "reason": "low_confidence", "detail": "confidence 3 is below --min-confidence 4"}
        ck.results.write_bytes(orjson.dumps(_pair("hi", 5)) + b"\n")
        ck.skipped.write_bytes(orjson.dumps(low) + b"\n")
        every = {"hi", "back"}
    else:  # the state a run without the filter left
        ck.results.write_bytes(orjson.dumps(_pair("lo", 3)) + b"\n" + orjson.dumps(_pair("hi", 5)) + b"\n")
        every = {"lo", "hi"}
    real = filters.atomic_write
    written = []

    def first_write_only(path, data):
        if written:
            raise _Killed
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(filters, "atomic_write", first_write_only)
    with pytest.raises(_Killed):
        apply_min_confidence(ck, threshold)
    on_disk = set(_ids(ck.results)) | set(_ids(ck.skipped))
    assert on_disk == every, f"{written[0]} was rewritten first, and the kill after it lost a pair"


@pytest.mark.parametrize("threshold", [3, None])
def test_a_pair_left_in_both_files_by_a_kill_while_moving_back_is_resolved(tmp_path, threshold):
    """Moving a pair back writes the results first: a kill then leaves it in the results (where it belongs now) and
    still in the skipped file. The next run, with the same threshold, leaves it in the results only."""
    ck = Checkpoint(tmp_path, "preferences")
    pair = _pair("aa", 4)
    ck.results.write_bytes(orjson.dumps(pair) + b"\n")
    ck.skipped.write_bytes(orjson.dumps({**pair, "reason": "low_confidence", "detail": "x"}) + b"\n")
    apply_min_confidence(ck, threshold)
    assert (_ids(ck.results), _ids(ck.skipped)) == (["aa"], [])


def test_with_swap_check_the_lower_confidence_of_the_two_orders_is_compared():
    judge = {"confidence": 5, "swap": {"confidence": 3}}
    assert not passes(judge, 4) and passes(judge, 3) and passes(judge, None)
    assert not passes({"confidence": 3, "swap": {"confidence": 5}}, 4)


# -- fingerprint ----------------------------------------------------------------------------------------------------


def _resume_refused(tmp_path, old: dict, new: dict) -> str | None:
    ck = Checkpoint(tmp_path, "x")
    ck.check_fingerprint(old, fresh=False)
    ck.results.write_bytes(b'{"id":"aa","input":"k"}\n')
    try:
        ck.check_fingerprint(new, fresh=False)
    except ConfigError as e:
        return str(e)
    return None


def test_a_setting_the_old_results_had_and_the_new_settings_lack_refuses_the_resume(tmp_path):
    old = fingerprint("generate", {"n": 3, "seed": 7}, "x")
    message = _resume_refused(tmp_path, old, fingerprint("generate", {"n": 3}, "x"))
    assert message is not None and "seed: was 7, now None" in message


def test_results_of_another_stage_are_not_resumed(tmp_path):
    message = _resume_refused(tmp_path, fingerprint("generate", {}, "x"), fingerprint("judge", {}, "x"))
    assert message is not None and "stage: was 'generate', now 'judge'" in message


def test_a_new_judge_prompt_version_refuses_the_resume(tmp_path, monkeypatch):
    import stages.judge.settings as judge_settings

    s = judge_settings.JudgeSettings(judge_model="gpt-5", judge_url="http://127.0.0.1:1/v1")
    old = fingerprint("judge", s.fingerprinted(), "x")
    monkeypatch.setattr(judge_settings, "PROMPT_VERSION", judge_settings.PROMPT_VERSION + "-edited")
    message = _resume_refused(tmp_path, old, fingerprint("judge", s.fingerprinted(), "x"))
    assert message is not None and "prompt_version: was" in message


# -- resume by content ----------------------------------------------------------------------------------------------


async def test_fields_the_judge_ignores_and_key_order_never_make_a_row_paid_again(tmp_path):
    """The input key hashes what the stage reads (prompt, completions, reference): a regenerated completions file
    whose rows differ only in other fields (model, finish_reasons, requests) or key order is resumed, not re-judged."""
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(4))
    async with run_in_process() as server:
        await judge(server, comp, out)
        assert judged(server) == 4
        regenerated = [{"requests": 2, "finish_reasons": ["stop"] * 3, "model": "seinfeld-v2",
                        "completions": r["completions"], "prompt": r["prompt"]} for r in rows(4)]
        write(comp, regenerated)
        again = await judge(server, comp, out)
        assert (again.succeeded, again.counters.done_before, judged(server)) == (0, 4, 4)
    assert not (out / "preferences.superseded.jsonl").exists() or read_jsonl(out / "preferences.superseded.jsonl") == []


async def test_records_from_before_input_keys_count_as_done(tmp_path):
    """A checkpoint written before records carried "input" is resumed as it is: no row of it is judged again."""
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(3))
    async with run_in_process() as server:
        await judge(server, comp, out)
        results = out / "preferences.jsonl"
        old = [{k: v for k, v in r.items() if k != "input"} for r in read_jsonl(results)]
        results.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in old))
        again = await judge(server, comp, out)
        assert (again.succeeded, again.counters.done_before, judged(server)) == (0, 3, 3)
    assert read_jsonl(results) == old  # nothing superseded or rewritten


# -- views ------------------------------------------------------------------------------------------------------------


async def test_a_view_keeps_rows_within_the_limit_and_one_record_per_row(tmp_path):
    from engine.view import write_view
    from stages.judge.rows import validate_completions_row

    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    write(comp, rows(5))
    async with run_in_process() as server:
        await judge(server, comp, out)
    ids = [prompt_id(r["prompt"]) for r in rows(5)]
    limited = await write_view(out / "preferences.jsonl", comp, validate_completions_row, out / "views", limit=2)
    assert sorted(_ids(limited)) == sorted(ids[:2])
    results = out / "preferences.jsonl"
    results.write_bytes(results.read_bytes() + results.read_bytes().splitlines(keepends=True)[0])  # a record twice
    view = await write_view(results, comp, validate_completions_row, out / "views")
    assert sorted(_ids(view)) == sorted(ids)


# -- place tokens -----------------------------------------------------------------------------------------------------


def test_an_upload_under_a_new_token_is_checked_on_its_own_folders_only(tmp_path):
    from steps.place_tokens import stamp_upload, upload_token
    from training.config import TRAIN_FILE, VAL_FILE

    work = tmp_path / "work"
    old, new = tmp_path / "vol" / "old", tmp_path / "vol" / "new"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / TRAIN_FILE).write_text("{}\n")
        (folder / VAL_FILE).write_text("{}\n")
    stamp_upload(work, "local", "tok-1", str(old))
    stamp_upload(work, "local", "tok-2", str(new))  # a later upload step run (its launch got a fresh token)
    (old / TRAIN_FILE).unlink()  # the first upload's folder is gone: not what tok-2 put in place
    from targets.spec import TargetSpec

    assert upload_token(TargetSpec(profile="local", model_key="m", workdir=str(work), state_dir="/nowhere")) == "tok-2"


# -- batch mode ---------------------------------------------------------------------------------------------------


async def test_a_batch_answer_for_a_row_changed_while_its_batch_ran_is_not_used(tmp_path):
    """A row whose completions changed after its request was submitted is judged again on its new text: the answer
    ranked the old completions, so using it would pair the new ones by the old verdict."""
    import asyncio

    from engine.options import RunOptions
    from stages.judge import run_judge
    from tests.test_judge import FAST, marked, prompt
    from tests.test_judge import write as write_rows
    from tests.test_judge_batch import _until_submitted, batch, rows_by_id

    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    items = [{"prompt": prompt(i), "completions": marked(i)} for i in range(3)]
    ids = write_rows(comp, items)
    async with run_in_process(batch_slow_polls=10_000) as server:  # in progress until the test lets it finish
        first = asyncio.create_task(run_judge(comp, out, batch(server), RunOptions(**FAST)))
        await _until_submitted(out, 1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        items[1]["completions"] = ["[ELAINE] new and PREFER-ME", "[NEWMAN] new and AVOID-ME", "[JERRY] new, plain"]
        write_rows(comp, items)
        server.control(batch_slow_polls=0)
        got = await run_judge(comp, out, batch(server), RunOptions(**FAST))
        requests = server.stats()["by_kind"]["judge"]
    assert (got.succeeded, got.failed, got.exit_code) == (3, 0, 0)
    assert requests == 3 + 1  # the changed row asked again, the others not
    changed = rows_by_id(out / "preferences.jsonl")[ids[1]]
    assert changed["chosen"][0]["content"] == "[ELAINE] new and PREFER-ME"
    assert changed["rejected"][0]["content"] == "[NEWMAN] new and AVOID-ME"


def _batch_helpers():
    from engine.options import RunOptions
    from stages.judge import run_judge
    from tests.test_judge import FAST, marked, prompt
    from tests.test_judge import write as write_rows
    from tests.test_judge_batch import batch, rows_by_id

    return run_judge, RunOptions, FAST, marked, prompt, write_rows, batch, rows_by_id


class _Exited(BaseException):
    """The process is killed here: what the folder holds is copied aside, nothing after runs."""


async def test_a_kill_right_after_batches_create_submits_no_second_batch(tmp_path, monkeypatch):
    """The uploaded file's id is saved before `batches.create`: killed before the batch id is written, the rerun
    finds the batch by that file id instead of uploading and paying for the chunk again."""
    import shutil

    from stages.judge.batch_state import Chunk

    run_judge, RunOptions, FAST, marked, prompt, write_rows, batch, rows_by_id = _batch_helpers()
    comp, out, killed = tmp_path / "c.jsonl", tmp_path / "b", tmp_path / "killed"
    ids = write_rows(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(4)])
    update = Chunk.update

    def kill_on_the_first_update(self, b):  # _send: right after create returned, before the batch id is saved
        shutil.copytree(out, killed)
        raise _Exited

    monkeypatch.setattr(Chunk, "update", kill_on_the_first_update)
    async with run_in_process() as server:
        with pytest.raises(_Exited):
            await run_judge(comp, out, batch(server), RunOptions(**FAST))
        monkeypatch.setattr(Chunk, "update", update)
        again = await run_judge(comp, killed, batch(server), RunOptions(**FAST))
        stats = server.stats()
    assert (again.succeeded, again.failed, again.exit_code) == (4, 0, 0)
    assert (stats["batch"]["files_uploaded"], stats["batch"]["batches_created"]) == (1, 1)
    assert stats["by_kind"]["judge"] == 4 and sorted(rows_by_id(killed / "preferences.jsonl")) == sorted(ids)


async def test_max_cost_in_batch_mode_with_swap_check_counts_each_order_as_half_a_row(tmp_path):
    """The forecast is per row (both orders with --swap-check): the cap admits twice as many requests as rows."""
    from stages.judge.cost import Prices

    run_judge, RunOptions, FAST, marked, prompt, write_rows, batch, rows_by_id = _batch_helpers()
    comp = tmp_path / "c.jsonl"
    write_rows(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(12)])
    # as test_max_cost_is_checked_before_submitting_at_batch_prices ($0.20 admits 4 single requests), both orders
    price = {"prices": Prices(0.0, 0.0, 1000.0), "expected_output_tokens": 90}
    async with run_in_process() as server:
        s = batch(server, swap_check=True, max_cost_usd=0.20, **price)
        got = await run_judge(comp, tmp_path / "b", s, RunOptions(**FAST))
        requests = server.stats()["by_kind"]["judge"]
    assert "max cost reached" in got.stopped_reason and got.cost_usd <= 0.20
    assert (requests, got.succeeded) == (4, 2)


async def test_a_batch_answer_cut_at_the_token_cap_fails_its_row_instead_of_retrying_forever(tmp_path):
    import asyncio

    run_judge, RunOptions, FAST, marked, prompt, write_rows, batch, rows_by_id = _batch_helpers()
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    write_rows(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(2)])
    async with run_in_process() as server:  # effort "high": 1,024 reasoning tokens; 256 and 512 cut, then the cap
        s = batch(server, reasoning_effort="high", max_completion_tokens=256, max_completion_tokens_cap=1024)
        got = await asyncio.wait_for(run_judge(comp, out, s, RunOptions(**FAST)), 20)
        requests = server.stats()["by_kind"]["judge"]
    assert (got.failed, got.succeeded, requests) == (2, 0, 2 * 3)  # 256, 512, 1024: cut at the cap, then failed
    errors = read_jsonl(out / "preferences.errors.jsonl")
    assert len(errors) == 2 and all("even at the cap of 1024" in e["error"] for e in errors)


async def test_a_collected_batch_is_marked_so_only_after_its_records_are_fsynced(tmp_path, monkeypatch):
    from engine.checkpoint import Writer
    from stages.judge.batch_state import BatchState

    run_judge, RunOptions, FAST, marked, prompt, write_rows, batch, rows_by_id = _batch_helpers()
    comp = tmp_path / "c.jsonl"
    write_rows(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(5)])
    events: list[str] = []
    write, fsync, save = Writer._write, Writer.fsync, BatchState.save

    def logged_write(self, f, record):
        events.append("write")
        return write(self, f, record)

    def logged_fsync(self):
        events.append("fsync")
        return fsync(self)

    def logged_save(self):
        events.append(f"save {sum(c.collected for c in self.chunks)} collected")
        return save(self)

    monkeypatch.setattr(Writer, "_write", logged_write)
    monkeypatch.setattr(Writer, "fsync", logged_fsync)
    monkeypatch.setattr(BatchState, "save", logged_save)
    async with run_in_process() as server:
        got = await run_judge(comp, tmp_path / "b", batch(server, batch_max_requests=2), RunOptions(**FAST))
    assert got.succeeded == 5
    marked_collected = 0
    for i, event in enumerate(events):
        if event.startswith("save") and int(event.split()[1]) > marked_collected:
            marked_collected = int(event.split()[1])
            last_write = max(j for j in range(i) if events[j] == "write")
            assert "fsync" in events[last_write:i], f"batch {marked_collected} marked collected before an fsync"
    assert marked_collected == 3


async def test_finish_live_does_not_start_while_a_batch_is_not_collected(tmp_path, monkeypatch):
    """A batch run that stopped with a batch still open (here: the Batch API failing while polling) leaves its rows
    to the next batch run: --finish-live judging them live would pay for them twice."""
    from stages.judge.batch_run import BatchApiError, BatchRun

    run_judge, RunOptions, FAST, marked, prompt, write_rows, batch, rows_by_id = _batch_helpers()
    comp, out = tmp_path / "c.jsonl", tmp_path / "b"
    write_rows(comp, [{"prompt": prompt(i), "completions": marked(i)} for i in range(3)])

    poll = BatchRun._poll_and_collect

    async def api_down_once_submitted(self):
        if self.state.open_chunks():
            raise BatchApiError("retrieve: HTTP 503 (attempt 6)")
        await poll(self)

    monkeypatch.setattr(BatchRun, "_poll_and_collect", api_down_once_submitted)
    async with run_in_process(batch_slow_polls=10_000) as server:
        got = await run_judge(comp, out, batch(server, finish_live=True), RunOptions(**FAST))
        live_requests = server.stats()["by_kind"].get("judge", 0)
    assert "the Batch API failed" in got.stopped_reason
    assert (got.succeeded, live_requests) == (0, 0) and read_jsonl(out / "preferences.jsonl") == []


async def test_a_skipped_row_whose_input_changed_is_moved_out_of_the_skipped_file_and_judged_once(tmp_path):
    """Superseding covers the skipped file too: the old skip record goes to the superseded file, so the row is
    judged once on its new completions and later runs do not see a stale record and pay for it again."""
    comp, out = tmp_path / "completions.jsonl", tmp_path / "j"
    items = rows(3)
    items[1] = {"prompt": items[1]["prompt"], "completions": ["[JERRY] same", "[JERRY] same"]}  # skipped: no request
    write(comp, items)
    async with run_in_process() as server:
        first = await judge(server, comp, out)
        assert (first.succeeded, first.skipped, judged(server)) == (2, 1, 2)
        old_skip = read_jsonl(out / "preferences.skipped.jsonl")
        items[1] = rows(3)[1]  # regenerated: now two distinct completions
        write(comp, items)
        second = await judge(server, comp, out)
        assert (second.succeeded, judged(server)) == (1, 3)
        third = await judge(server, comp, out)
        assert (third.succeeded, third.counters.done_before, judged(server)) == (0, 3, 3)  # not paid again
    assert read_jsonl(out / "preferences.skipped.jsonl") == []
    assert read_jsonl(out / "preferences.superseded.jsonl") == old_skip
    assert sorted(_ids(out / "preferences.jsonl")) == sorted(prompt_id(r["prompt"]) for r in items)
