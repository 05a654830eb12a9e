"""Before the first paid call of the modal profile: is every credential and endpoint there?

Two passes, each listing every problem it finds rather than the first:
1. offline (instant, no network): NGPT_SFT_ADAPTER names an uploaded SFT adapter's folder; SERVE_URL,
   SERVE_API_KEY, OPENAI_API_KEY and a Modal token are configured;
2. online (free calls only): the SFT endpoint accepts the key and lists the model loaded from that folder (the
   app scales to zero, so this waits up to the app's start-up timeout while a cold endpoint wakes), OpenAI
   accepts the key and knows the judge model, Modal accepts the token and holds the secrets the apps mount.
The second pass runs only when the first found nothing. Secrets are checked for presence, never printed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from infra.adapter_hash import FOLDER_CHARS
from infra.names import ENV_VARS, NAMES
from serving.startup import STARTUP_TIMEOUT
from stages.generate import DEFAULT_SERVE_URL
from stages.judge.backends import backend_of

logger = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
SFT_ADAPTER_VAR = ENV_VARS["sft_adapter"][0]  # NGPT_SFT_ADAPTER
WAKE_POLL_S = 10.0  # between tries of GET /models while a cold endpoint starts
WAKING = {502, 503, 504}  # what a proxy answers while the server behind it starts


def sft_adapter_problem(folder: str) -> str | None:
    """Why `folder` (NGPT_SFT_ADAPTER) cannot name the SFT adapter that training starts from and serving loads;
    None when it is a content-addressed folder as `upload --adapter` makes (<NAMES.sft_adapters>/<hash>)."""
    how = (f"upload the SFT adapter with `python -m pipelines.dpo upload --adapter DIR` and export the folder it "
           f"prints: {SFT_ADAPTER_VAR}={NAMES.sft_adapters}/<hash>")
    if not folder:
        return f"{SFT_ADAPTER_VAR} is not set (training starts from that adapter and the deploy serves it): {how}"
    path = PurePosixPath(folder)
    if path.parent != PurePosixPath(NAMES.sft_adapters) or not re.fullmatch(f"[0-9a-f]{{{FOLDER_CHARS}}}", path.name):
        return (f"{SFT_ADAPTER_VAR}={folder} is not a content-addressed adapter folder, so the samples could not be "
                f"keyed by the adapter's content: {how}")
    return None


def offline_problems(cfg: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """What the modal profile lacks that no network call is needed to see. `cfg` is a PipelineConfig."""
    env = os.environ if env is None else env
    problems = []
    adapter_problem = sft_adapter_problem(env.get(SFT_ADAPTER_VAR, ""))
    if adapter_problem:
        problems.append(adapter_problem)
    if not env.get("SERVE_URL") and cfg.generate.serve_url == DEFAULT_SERVE_URL:
        problems.append(
            "SERVE_URL is not set: export the vLLM endpoint serving the SFT adapter, e.g. "
            "SERVE_URL=https://<workspace>--nothing-gpt-serve-serve.modal.run/v1 (`python -m pipelines.dpo deploy` "
            "prints it)"
        )
    if not env.get("SERVE_API_KEY"):
        problems.append(
            f"SERVE_API_KEY is not set: export the key the endpoint wants (the SERVE_API_KEY stored in the Modal "
            f"secret {NAMES.serve_key_secret!r})"
        )
    if backend_of(cfg.judge).sends_requests and cfg.judge.judge_url is None and not env.get("OPENAI_API_KEY"):
        problems.append("OPENAI_API_KEY is not set: export your OpenAI API key for the GPT-5 judge")
    from infra.modal_credentials import modal_credentials_problem

    modal_problem = modal_credentials_problem(env)
    if modal_problem:
        problems.append(f"Modal token: {modal_problem}")
    return problems


def online_problems(cfg: Any, env: Mapping[str, str] | None = None, timeout_s: float = 60.0,
                    wake_timeout_s: float = STARTUP_TIMEOUT) -> list[str]:
    """Free calls that prove each endpoint and credential works. Network required.

    `wake_timeout_s` bounds the wait for the serving endpoint (a cold start: the app scales to zero); `timeout_s`
    each other call."""
    env = os.environ if env is None else env
    problems = _serve_problems(cfg, env, wake_timeout_s)
    if backend_of(cfg.judge).sends_requests:
        judge_url = (cfg.judge.judge_url or OPENAI_URL).rstrip("/")
        try:
            _get_json(f"{judge_url}/models/{cfg.judge.judge_model}", env.get("OPENAI_API_KEY"), timeout_s)
        except urllib.error.HTTPError as e:
            why = "the key was refused" if e.code in (401, 403) else f"HTTP {e.code}"
            problems.append(f"OpenAI ({judge_url}): {why} for model {cfg.judge.judge_model!r}; check "
                            "OPENAI_API_KEY and JUDGE_MODEL")
        except (OSError, ValueError) as e:
            problems.append(f"OpenAI ({judge_url}) did not answer: {e}")
    problems += _modal_problems()
    return problems


def _serve_problems(cfg: Any, env: Mapping[str, str], wake_timeout_s: float) -> list[str]:
    """The endpoint answers GET /models with the key and lists the model, loaded from NGPT_SFT_ADAPTER's folder.

    Connection errors, timeouts and 502/503/504 mean a cold endpoint still starting: tried again until
    `wake_timeout_s` (the app's start-up timeout) is over."""
    serve_url = cfg.generate.serve_url.rstrip("/")
    deadline = time.monotonic() + wake_timeout_s
    logger.info("waking the endpoint %s if it is cold (it scales to zero; waiting up to %.0f min for GET /models)",
                serve_url, wake_timeout_s / 60)
    while True:
        try:
            cards = _get_json(f"{serve_url}/models", env.get("SERVE_API_KEY"),
                              max(deadline - time.monotonic(), 1.0)).get("data", [])
            break
        except urllib.error.HTTPError as e:
            if e.code not in WAKING:
                return [f"SERVE_URL {serve_url}: HTTP {e.code} for GET /models"
                        + ("; the endpoint refused SERVE_API_KEY" if e.code in (401, 403) else "")]
            last: Exception = e
        except (OSError, ValueError) as e:
            last = e
        if time.monotonic() + WAKE_POLL_S >= deadline:
            return [f"SERVE_URL {serve_url} did not answer GET /models within {wake_timeout_s:g} s, the app's "
                    f"start-up timeout ({last}): check the URL and the app's logs (`modal app logs "
                    f"{NAMES.serve_app}`), then run again"]
        logger.info("the endpoint is not up yet (%s); trying again in %g s", last, WAKE_POLL_S)
        time.sleep(WAKE_POLL_S)
    roots = {m.get("id"): m.get("root") for m in cards}
    if cfg.generate.model not in roots:
        return [f"SERVE_URL {serve_url} does not serve {cfg.generate.model!r} (it lists {sorted(roots)}); "
                "redeploy with `python -m pipelines.dpo deploy`"]
    wanted, root = env.get(SFT_ADAPTER_VAR, ""), roots[cfg.generate.model]
    if cfg.generate.model == NAMES.sft_model_name and root and wanted and root != wanted:
        return [f"SERVE_URL {serve_url} serves {cfg.generate.model!r} from {root}, not {SFT_ADAPTER_VAR}={wanted}: "
                "the samples would come from another adapter than their key says; redeploy with `python -m "
                f"pipelines.dpo deploy`, or export {SFT_ADAPTER_VAR}={root}"]
    return []


def _modal_problems() -> list[str]:
    """Modal accepts the token, and the secrets the apps mount exist."""
    import modal
    import modal.exception

    problems = []
    for secret in (s for s in (NAMES.hf_secret, NAMES.wandb_secret, NAMES.serve_key_secret) if s):  # "" = unused
        try:
            modal.Secret.from_name(secret).hydrate()
        except modal.exception.AuthError as e:
            return [f"Modal refused the token ({e}): run `modal token new`"]
        except modal.exception.NotFoundError:
            problems.append(
                f"Modal secret {secret!r} is missing: create it with `modal secret create {secret} KEY=...` "
                "(HF_TOKEN for the gated base model, WANDB_API_KEY for W&B, SERVE_API_KEY for the endpoint)"
            )
        except Exception as e:  # reported with its type: any other failure still blocks a paid run
            problems.append(f"checking Modal secret {secret!r} failed: {type(e).__name__}: {e}")
    return problems


def _get_json(url: str, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) URLs from config
        return json.loads(response.read())
