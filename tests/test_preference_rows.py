"""One preference-row check for the split stage and training: both accept and refuse the same rows, naming file:line.

The rows below are the cases where the two used to disagree (the split accepted a blank or role-less answer,
an answer not ending with the assistant, mixed formats; training accepted chosen == rejected and roles the chat
template does not know).
"""

from __future__ import annotations

import orjson
import pytest

from engine.errors import ConfigError
from stages.split import split_preferences
from training.data import load_preference_rows
from training.errors import TrainingInputError

PROMPT = [{"role": "system", "content": "brief"}, {"role": "user", "content": "[JERRY] Hi."}]


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


GOOD = {"prompt": PROMPT, "chosen": said("[JERRY] good"), "rejected": said("[KRAMER] bad"), "id": "x", "judge": {}}
STRING = {"prompt": "[JERRY] Hi.", "chosen": "[GEORGE] Hey.", "rejected": "[KRAMER] No."}

CASES = {  # name: (row on line 2 after a valid conversational row, problem or None when valid)
    "conversational, extra keys": (GOOD, None),
    "a longer exchange ending with the assistant": (
        {**GOOD, "chosen": [*said("a"), {"role": "user", "content": "b"}, *said("c")]},
        None,
    ),
    "chosen equals rejected": ({**GOOD, "rejected": GOOD["chosen"]}, '"chosen" equals "rejected"'),
    "rejected missing": ({k: v for k, v in GOOD.items() if k != "rejected"}, 'missing "rejected"'),
    "blank chosen text": ({**GOOD, "chosen": said("  ")}, '"chosen" is empty'),
    "empty chosen list": ({**GOOD, "chosen": []}, '"chosen" must be a non-empty list of messages'),
    "message without a role": ({**GOOD, "chosen": [{"content": "x"}]}, '"chosen"[0] must be a message'),
    "unknown role": ({**GOOD, "rejected": [{"role": "narrator", "content": "x"}]}, '"rejected"[0] must be a message'),
    "content not a string": ({**GOOD, "chosen": [{"role": "assistant", "content": 3}]}, '"chosen"[0] must be'),
    "ends with the user": ({**GOOD, "chosen": [{"role": "user", "content": "x"}]}, "must end with an assistant"),
    "the assistant, then the user": (
        {**GOOD, "rejected": [*said("x"), {"role": "user", "content": "y"}]},
        "must end with an assistant",
    ),
    "prompt role unknown": ({**GOOD, "prompt": [{"role": "bot", "content": "x"}]}, '"prompt"[0].role must be'),
    "prompt all blank": ({**GOOD, "prompt": [{"role": "user", "content": " "}]}, '"prompt" messages are all empty'),
    "string answer to a message prompt": ({**GOOD, "chosen": "x"}, "must be a non-empty list of messages"),
    "string row after a conversational one": (STRING, "row is string but earlier rows are conversational"),
    "blank string answer": ({**STRING, "chosen": " \n"}, '"chosen" is empty'),
    "not an object": ([1, 2], "expected a JSON object, got list"),
}


def _split_problem(path, tmp_path) -> str | None:
    try:
        split_preferences(path, tmp_path / "split")
    except ConfigError as e:
        return str(e)
    return None


def _train_problem(path) -> str | None:
    try:
        load_preference_rows(path)
    except TrainingInputError as e:
        return str(e)
    return None


@pytest.mark.parametrize("name", CASES)
def test_split_and_training_accept_and_refuse_the_same_rows(name, tmp_path):
    row, problem = CASES[name]
    other = {**GOOD, "prompt": [{"role": "user", "content": "[ELAINE] Another scene."}]}
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(orjson.dumps(other) + b"\n" + orjson.dumps(row) + b"\n")
    by_split, by_training = _split_problem(path, tmp_path), _train_problem(path)
    if problem is None:
        assert (by_split, by_training) == (None, None)
    else:
        for message in (by_split, by_training):
            assert message is not None and f"{path}:2: " in message and problem in message, message


def test_bad_json_and_string_files(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(orjson.dumps(STRING) + b"\n\n" + orjson.dumps({**STRING, "prompt": "[ELAINE] Hi."}) + b"\r\n")
    rows, row_format = load_preference_rows(path)
    assert row_format == "string" and len(rows) == 2 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    split = split_preferences(path, tmp_path / "split")  # rows copied byte for byte, the CRLF one included
    assert split.n_train + split.n_val == 2
    assert sorted((split.train_path.read_bytes() + split.val_path.read_bytes()).splitlines(keepends=True)) == sorted(
        line + b"\n" for line in path.read_bytes().split(b"\n") if line.strip()
    )
    path.write_bytes(orjson.dumps(STRING) + b"\n{not json\n")
    assert f"{path}:2: not valid JSON" in _split_problem(path, tmp_path)
    assert f"{path}:2: not valid JSON" in _train_problem(path)
