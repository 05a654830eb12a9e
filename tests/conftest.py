"""Shared fixtures.

- `tiny_kit`: the tiny Llama base, SFT and DPO adapters (built once, cached in .cache/tiny-kit).
- `trained_dpo`: a DPO adapter trained now by `train_dpo` on the 4-bit path with the local profile's settings.
- `local_vllm`: one vLLM (CPU build) for the whole session serving the kit's SFT adapter as "seinfeld" and
  `trained_dpo` as "seinfeld-dpo"; tests that only need a server share it (a start costs ~20-40 s).
Nothing the suite starts outlives it: a session guard fails the run if a vLLM server it started is still up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_kit():
    """The tiny model kit (training.tiny.TinyKit): `base_dir`, `sft_adapter_dir`, `dpo_adapter_dir`."""
    from training.tiny import ensure_tiny_kit

    return ensure_tiny_kit()


@pytest.fixture(scope="session")
def trained_dpo(tiny_kit, tmp_path_factory):
    """train_dpo's result (TrainResult) for the local profile's train settings, on sample pairs."""
    import yaml

    from training.config import DPOTrainConfig
    from training.dpo import train_dpo
    from training.tiny import write_sample_preferences

    work = tmp_path_factory.mktemp("trained-dpo")
    local_train = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["train"]
    config = DPOTrainConfig.cpu_test(
        **local_train,
        data_dir=str(write_sample_preferences(work / "pairs")),
        base_model=str(tiny_kit.base_dir),
        sft_adapter=str(tiny_kit.sft_adapter_dir),
        output_dir=str(work / "checkpoints"),
        adapter_out=str(work / "seinfeld-dpo"),
    )
    return train_dpo(config)


@pytest.fixture(scope="session")
def local_vllm(tiny_kit, trained_dpo, tmp_path_factory):
    """serving.local_vllm.LocalServer: base served as "tiny-base", "seinfeld" (SFT), "seinfeld-dpo" (trained)."""
    from serving.local_vllm import start_local_vllm

    adapters = {"seinfeld": tiny_kit.sft_adapter_dir, "seinfeld-dpo": trained_dpo.adapter_dir}
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with start_local_vllm(tiny_kit.base_dir, adapters, served_model_name="tiny-base", timeout_s=300,
                          log_path=log) as server:
        yield server


SESSION_ENV = "NGPT_TEST_SESSION"  # every process the suite starts inherits it, vLLM servers included


def _vllm_servers(marker: bytes) -> set[int]:
    """vLLM servers whose environment carries this session's marker (not a user's, not another session's)."""
    from serving.vllm_cmd import API_SERVER_MODULE

    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if API_SERVER_MODULE.encode() in (proc / "cmdline").read_bytes() and marker in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                pids.add(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_suite():
    """Fail the session if a vLLM server it started is still running at the end (and stop it)."""
    if not Path("/proc").is_dir():
        yield
        return
    import os
    import uuid

    os.environ[SESSION_ENV] = uuid.uuid4().hex
    marker = f"{SESSION_ENV}={os.environ[SESSION_ENV]}".encode()
    yield
    left = _vllm_servers(marker)
    if left:
        from serving.local_vllm import stop_pid

        for pid in left:
            stop_pid(pid)
        pytest.fail(f"vLLM servers started by the tests were still running at the end: pids {sorted(left)}")



# The suite runs on two workers (pytest-xdist, `-n 2`, pyproject's addopts). Much of its time it waits on servers and
# subprocesses, so a second worker on two cores takes a good part off the wall time. Each expensive fixture must
# still be built once: the tests that use the shared vLLM (or the DPO adapter it serves) form one group on one worker,
# and every other module's tests one group each (so a module-scoped fixture, such as the pipeline chain, runs once).
# Groups holding a slow test are sent first, so no worker ends on a long tail. xdist's own `loadgroup` cannot do this
# under pytest 9.2 (it renames `item._nodeid`, which pytest no longer reads), so the workers write each test's group
# to a file and the scheduler below reads it: only xdist's public scheduler hook is used.
SHARED_SERVER_FIXTURES = {"local_vllm", "trained_dpo"}
GROUPS_ENV = "NGPT_TEST_GROUPS"  # the file the workers write {nodeid: group} to


def _group(item: pytest.Item) -> str:
    if SHARED_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "shared-vllm"
    return item.nodeid.split("::")[0]


def pytest_configure(config):
    import os
    import tempfile

    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):  # the controller
        os.environ[GROUPS_ENV] = str(Path(tempfile.mkdtemp(prefix="ngpt-test-groups-")) / "groups.json")


def pytest_unconfigure(config):
    import os
    import shutil

    if not hasattr(config, "workerinput") and os.environ.get(GROUPS_ENV):
        shutil.rmtree(Path(os.environ.pop(GROUPS_ENV)).parent, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import json
    import os

    groups = {item.nodeid: _group(item) for item in items}
    slow = {groups[item.nodeid] for item in items if item.get_closest_marker("slow")}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(groups[item.nodeid], index)
    items.sort(key=lambda item: (groups[item.nodeid] not in slow, first_seen[groups[item.nodeid]]))
    if hasattr(config, "workerinput") and os.environ.get(GROUPS_ENV):
        target = Path(os.environ[GROUPS_ENV])
        partial = target.with_name(f"{config.workerinput['workerid']}.json")
        partial.write_text(json.dumps(groups))
        partial.replace(target)  # every worker collects the same tests, so either file is the whole map


@pytest.hookimpl(optionalhook=True)  # a known hook only where xdist is loaded
def pytest_xdist_make_scheduler(config, log):
    import json
    import os

    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling with the groups above as the scopes."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = json.loads(Path(os.environ[GROUPS_ENV]).read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)
