"""Run DPO training on Modal from this machine.

Choice: an ephemeral run of the app (`app.run(detach=True)` + `train.spawn`), not a deployed function.
The container then always runs the code of the checkout that launched it (the adapter's lineage is this
commit; no `modal deploy` step to forget or to go stale), and `detach=True` keeps the run going if this
client disconnects: the adapter and its metrics still land on the volume.

One run at a time per fingerprint: the call training a run is recorded in a Modal Dict under its run id. A
second launch of the same run (the pipeline rerun after the local process died) finds that call and waits for
it, or takes its result if it already finished, instead of training into the same folders at the same time.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from infra.names import NAMES
from training.config import DPOTrainConfig
from training.errors import TrainingInputError
from training.modal_auth import modal_auth_errors, require_modal_credentials
from training.upload import container_path

logger = logging.getLogger(__name__)

RUNNING, FINISHED, FAILED = "running", "finished", "failed"


class RunCalls(Protocol):
    """The Modal side of one-run-at-a-time: a registry of calls by run id, and the calls themselves."""

    def recorded(self, run_id: str) -> str | None: ...
    def record(self, run_id: str, call_id: str, *, only_if_absent: bool) -> bool: ...
    def state(self, call_id: str) -> str: ...  # RUNNING, FINISHED or FAILED (also: unknown, expired)
    def wait(self, call_id: str) -> dict[str, Any]: ...
    def spawn(self) -> str: ...
    def cancel(self, call_id: str) -> None: ...


def attach_or_spawn(run_id: str, calls: RunCalls) -> dict[str, Any]:
    """Wait for the call already training `run_id` (or take its result); else start one and wait for it.

    A failed or forgotten call is replaced: the new one resumes from the run's checkpoints. Two launches
    racing past the lookup both spawn, but only one records its call; the other cancels its own and waits
    for the recorded one.
    """
    existing = calls.recorded(run_id)
    state = calls.state(existing) if existing else None
    if existing and state in (RUNNING, FINISHED):
        logger.info("run %s is %s in call %s: %s", run_id, state, existing,
                    "waiting for it" if state == RUNNING else "taking its result")
        return calls.wait(existing)
    call_id = calls.spawn()
    if not calls.record(run_id, call_id, only_if_absent=existing is None):
        winner = calls.recorded(run_id)
        if winner and winner != call_id:
            logger.info("run %s was started at the same moment by call %s: waiting for it", run_id, winner)
            calls.cancel(call_id)
            return calls.wait(winner)
    logger.info("run %s: training in call %s", run_id, call_id)
    return calls.wait(call_id)


def train_remote(data_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on Modal's L4 with the split at `data_path` (a volume path such as /data/dpo/<hash>).

    Overrides are validated here first (unknown keys and bad values fail before anything starts), then
    credentials, then the inputs on the volume on a CPU container (before any GPU starts); returns the metrics
    dict of the run (with adapter_dir, adapter_sha256, metrics_path, checkpoint_dir).
    """
    data_dir = container_path(data_path)
    overrides = dict(overrides or {})
    DPOTrainConfig.from_overrides(overrides, data_dir=data_dir).require_sft_adapter()  # validate only
    require_modal_credentials()
    import modal

    from training.modal_app import app, check_run, train

    logger.info("starting DPO training on Modal (%s) with data %s", app.name, data_dir)
    with modal_auth_errors(), modal.enable_output(), app.run(detach=True):
        plan = check_run.remote(data_dir, overrides)  # raises TrainingInputError: bad input, no GPU started
        logger.info("run %s in %s (resuming from %s)", plan["run_id"], plan["checkpoint_dir"], plan["resume_from"])
        result = attach_or_spawn(plan["run_id"], _ModalRunCalls(lambda: train.spawn(data_dir, overrides)))
    if "input_error" in result:
        raise TrainingInputError(result["input_error"])
    return result


def call_state(call_id: str, call: Any) -> str:
    """RUNNING, FINISHED or FAILED for a `modal.FunctionCall`, from a `get(timeout=0)`.

    Only the builtin `TimeoutError` means "still running" (modal 1.6.4 `_FunctionCall.get` raises it when no
    output is there yet). `modal.exception.TimeoutError` is not the builtin: its subclasses `OutputExpiredError`
    (the result expired) and `FunctionTimeoutError` (the function's timeout killed the call) mean the call is
    over, so it is FAILED and a rerun starts a new call that resumes from the volume's checkpoint; taking them
    for RUNNING would keep the registry entry forever.
    """
    import modal.exception

    try:
        call.get(timeout=0)
    except modal.exception.TimeoutError as e:  # before the builtin: expired, or killed by its function timeout
        logger.info("call %s is over (%s: %s): a new call resumes the run", call_id, type(e).__name__, e)
        return FAILED
    except TimeoutError:
        return RUNNING
    except Exception as e:  # failed, cancelled or unknown: a new call resumes the run
        logger.info("call %s cannot be attached to (%s: %s)", call_id, type(e).__name__, e)
        return FAILED
    return FINISHED


class _ModalRunCalls:
    """RunCalls on a Modal Dict (run id -> function call id) and modal.FunctionCall."""

    def __init__(self, spawn) -> None:
        import modal

        self._dict = modal.Dict.from_name(NAMES.runs_dict, create_if_missing=True)
        self._spawn = spawn

    def recorded(self, run_id: str) -> str | None:
        return self._dict.get(run_id)

    def record(self, run_id: str, call_id: str, *, only_if_absent: bool) -> bool:
        return bool(self._dict.put(run_id, call_id, skip_if_exists=only_if_absent))

    def state(self, call_id: str) -> str:
        import modal

        return call_state(call_id, modal.FunctionCall.from_id(call_id))

    def wait(self, call_id: str) -> dict[str, Any]:
        import modal

        return modal.FunctionCall.from_id(call_id).get()

    def spawn(self) -> str:
        return self._spawn().object_id

    def cancel(self, call_id: str) -> None:
        import modal

        modal.FunctionCall.from_id(call_id).cancel()
