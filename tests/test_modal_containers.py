"""Each Modal container can import all the code its functions reach, from its mounted sources and its image's
packages alone (issue 27). Every other test runs with the whole repository importable, so none of them could see
that the training container lacked `engine` (training/data.py imported engine.preference_rows) and `orjson`.
`make rehearse` (tests/test_rehearsal.py) then runs the functions in a replica of each container.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.containers import (
    ROOT,
    Container,
    dependency_closure,
    import_problems,
    serving_container,
    training_container,
    walk,
)


@pytest.mark.parametrize("container", [training_container(), serving_container()], ids=["training", "serving"])
def test_every_import_a_container_reaches_is_mounted_or_installed(container):
    assert import_problems(container) == []


def test_the_walk_follows_lazy_imports_into_every_module_the_training_functions_run():
    reached = walk(training_container())
    # check_run and train import these inside their bodies; training.data reaches the shared row rules.
    assert {"training.dpo", "training.data", "training.resume", "training.upload"} <= set(reached)
    assert {"infra.preference_rows", "infra.prompt_rules", "infra.names"} <= set(reached)
    assert not any(m.startswith(("engine", "stages", "pipelines", "steps", "targets")) for m in reached)


def test_a_module_outside_the_mounted_sources_is_named_with_its_importer():
    today = training_container()
    problems = import_problems(Container(today.app_module, today.packages, ("training",)))
    assert "training.modal_app imports infra.names, but the container mounts only ('training',)" in problems
    assert any(p.startswith("training.data imports infra.preference_rows") for p in problems)


def test_a_library_the_image_lacks_is_named_with_its_importer_and_distribution():
    today = training_container()
    without_orjson = tuple(p for p in today.packages if not p.startswith("orjson"))
    problems = import_problems(Container(today.app_module, without_orjson, today.sources))
    assert problems == [
        "infra.preference_rows imports orjson (distribution orjson), which the image does not install: add it to "
        "the app's PACKAGES or import it elsewhere",
        "infra.prompt_rules imports orjson (distribution orjson), which the image does not install: add it to "
        "the app's PACKAGES or import it elsewhere",
    ]


def test_a_lazy_import_of_a_missing_library_counts_too():
    today = training_container()
    without_trl = tuple(p for p in today.packages if not p.startswith("trl"))
    problems = import_problems(Container(today.app_module, without_trl, today.sources))
    assert any(p.startswith("training.dpo imports trl (distribution trl)") for p in problems)  # inside train_dpo


def test_what_a_package_depends_on_counts_as_installed_with_it():
    assert {"transformers", "safetensors", "huggingface-hub"} <= dependency_closure({"transformers"})
    assert "torch" not in dependency_closure({"transformers"})  # an extra ("torch") is not installed with it


def test_a_local_entrypoint_runs_on_the_users_machine_and_is_left_out():
    reached = walk(serving_container())
    assert "serving.vllm_cmd" in reached and "infra.lora_rules" in reached
    assert "serving.readiness" not in reached  # only the `smoke` entrypoint imports it (and it needs openai)


# The images are built from those names: record what each image was asked to install and mount.
RECORD = """
import json, modal
calls = []
for method in ("uv_pip_install", "pip_install", "add_local_python_source"):
    original = getattr(modal.Image, method)
    def recording(self, *args, _original=original, _method=method, **kwargs):
        calls.append([_method, list(args)])
        return _original(self, *args, **kwargs)
    setattr(modal.Image, method, recording)
import training.modal_app as t, serving.modal_app as s
print(json.dumps({"calls": calls, "training": [list(t.PACKAGES), list(t.SOURCES)],
                  "serving": [list(s.VLLM_PACKAGES), list(s.TOOLS_PACKAGES), list(s.SOURCES)]}))
"""


def test_each_image_is_built_from_the_names_the_checks_read():
    out = subprocess.run([sys.executable, "-c", RECORD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    packages, sources = seen["training"]
    vllm, tools, serving_sources = seen["serving"]
    installs = [args for method, args in seen["calls"] if method != "add_local_python_source"]
    mounts = [args for method, args in seen["calls"] if method == "add_local_python_source"]
    assert sorted(installs) == sorted([packages, vllm, tools])
    assert sorted(mounts) == sorted([sources, serving_sources, serving_sources])
    assert "orjson" in {p.split("==")[0] for p in packages}
