"""Before the first paid call of the modal profile: is every credential and endpoint there?

Two passes, each listing every problem it finds rather than the first:
1. offline (instant, no network): SERVE_URL, SERVE_API_KEY, OPENAI_API_KEY and a Modal token are configured;
2. online (free calls only): the SFT endpoint accepts the key and lists the model, OpenAI accepts the key and
   knows the judge model, Modal accepts the token and holds the secrets the apps mount.
The second pass runs only when the first found nothing. Secrets are checked for presence, never printed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from engine.generate import DEFAULT_SERVE_URL
from infra.names import NAMES

logger = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"


def offline_problems(cfg: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """What the modal profile lacks that no network call is needed to see. `cfg` is a PipelineConfig."""
    env = os.environ if env is None else env
    problems = []
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
    if cfg.judge.backend == "openai" and cfg.judge.judge_url is None and not env.get("OPENAI_API_KEY"):
        problems.append("OPENAI_API_KEY is not set: export your OpenAI API key for the GPT-5 judge")
    from serving.deploy import modal_credentials_problem

    modal_problem = modal_credentials_problem(env)
    if modal_problem:
        problems.append(f"Modal token: {modal_problem}")
    return problems


def online_problems(cfg: Any, env: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> list[str]:
    """Free calls that prove each endpoint and credential works. Network required."""
    env = os.environ if env is None else env
    problems = []
    serve_url = cfg.generate.serve_url.rstrip("/")
    try:
        models = [m.get("id") for m in _get_json(f"{serve_url}/models", env.get("SERVE_API_KEY"), timeout_s)
                  .get("data", [])]
        if cfg.generate.model not in models:
            problems.append(
                f"SERVE_URL {serve_url} does not serve {cfg.generate.model!r} (it lists {models}); "
                "redeploy with `python -m pipelines.dpo deploy`"
            )
    except urllib.error.HTTPError as e:
        problems.append(f"SERVE_URL {serve_url}: HTTP {e.code} for GET /models"
                        + ("; the endpoint refused SERVE_API_KEY" if e.code in (401, 403) else ""))
    except (OSError, ValueError) as e:
        problems.append(
            f"SERVE_URL {serve_url} did not answer GET /models within {timeout_s:g} s ({e}); a cold start can "
            "take minutes: check the URL, wait for the app to warm up, then run again"
        )
    if cfg.judge.backend == "openai":
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
