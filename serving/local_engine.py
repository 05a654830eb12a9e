"""The model side of the local server: one base model, its LoRA adapters, chat generation on CPU.

PEFT holds every adapter on the one base model; each request activates its adapter with
`set_adapter` (or disables adapters for the base) and generates while holding a lock, so
concurrent requests never see each other's adapter. Generation is blocking: the server runs
it in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingRequest:
    """One validated chat request, already in the engine's terms."""

    model: str
    messages: list[dict]
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"
    tokens: int


@dataclass(frozen=True)
class Generation:
    samples: list[Sample]
    prompt_tokens: int


class PromptTooLong(ValueError):
    """The prompt plus max_new_tokens does not fit the context length."""


class LocalEngine:
    """A base model with named LoRA adapters, generating chat completions."""

    def __init__(self, model, tokenizer, *, base_name: str, base_dir: Path, adapters: Mapping[str, Path],
                 internal_names: Mapping[str, str | None], max_model_len: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._internal = dict(internal_names)  # served name -> PEFT adapter name (None: the base)
        self._lock = threading.Lock()
        self.base_name = base_name
        self.base_dir = base_dir
        self.adapters = dict(adapters)
        self.max_model_len = max_model_len
        self.created = int(time.time())

    @classmethod
    def load(cls, base_dir: Path, adapters: Mapping[str, Path], *, base_name: str | None = None,
             max_model_len: int = 2048) -> LocalEngine:
        """Load the base model and tokenizer from `base_dir` and every adapter in `adapters` (name -> folder)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base_dir = Path(base_dir)
        name = base_name or str(base_dir)
        if name in adapters:
            raise ValueError(f"the base model name {name!r} is also an adapter name; rename one of them")
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        if not tokenizer.chat_template:
            raise ValueError(f"the tokenizer in {base_dir} has no chat template; chat requests need one")
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        internal: dict[str, str | None] = {name: None}
        if adapters:
            from peft import PeftModel

            # PEFT names are internal ("a0", "a1", ...): served names such as "train" or ones with
            # dots would collide with module attributes.
            for i, (served, folder) in enumerate(adapters.items()):
                peft_name = f"a{i}"
                if i == 0:
                    model = PeftModel.from_pretrained(model, str(folder), adapter_name=peft_name)
                else:
                    model.load_adapter(str(folder), adapter_name=peft_name)
                internal[served] = peft_name
        model.eval()
        logger.info("loaded %s with adapters %s", base_dir, list(adapters))
        return cls(model, tokenizer, base_name=name, base_dir=base_dir,
                   adapters={k: Path(v) for k, v in adapters.items()}, internal_names=internal,
                   max_model_len=max_model_len)

    @property
    def model_names(self) -> list[str]:
        return list(self._internal)

    def generate(self, request: SamplingRequest) -> Generation:
        """Generate `request.n` samples (blocking; safe to call from several threads)."""
        import torch

        if request.model not in self._internal:
            raise KeyError(request.model)
        tok = self._tokenizer
        text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(text, add_special_tokens=False, return_tensors="pt")  # the template adds BOS itself
        prompt_len = int(inputs["input_ids"].shape[1])
        if prompt_len + request.max_new_tokens > self.max_model_len:
            raise PromptTooLong(
                f"this model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{prompt_len} and max_tokens asks for {request.max_new_tokens} more"
            )
        sampling = request.temperature > 0
        kwargs = {
            "max_new_tokens": request.max_new_tokens,
            # Greedy decoding gives one answer: generate it once and repeat it n times (as vLLM returns).
            "num_return_sequences": request.n if sampling else 1,
            "do_sample": sampling,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        }
        if sampling:
            kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=0)  # top_k=0: off, as vLLM
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)  # greedy: no sampling settings
        with self._lock, torch.inference_mode():
            if request.seed is not None:
                torch.manual_seed(request.seed)  # under the lock: the same seed gives the same n samples
            adapter = self._internal[request.model]
            if adapter is None:
                if hasattr(self._model, "disable_adapter"):
                    with self._model.disable_adapter():
                        out = self._model.generate(**inputs, **kwargs)
                else:
                    out = self._model.generate(**inputs, **kwargs)
            else:
                self._model.set_adapter(adapter)
                out = self._model.generate(**inputs, **kwargs)
        rows = list(out) if sampling else [out[0]] * request.n
        samples = [self._decode(row[prompt_len:], request.stop) for row in rows]
        return Generation(samples=samples, prompt_tokens=prompt_len)

    def _decode(self, ids, stop: tuple[str, ...]) -> Sample:
        eos = self._eos_ids()
        tokens = ids.tolist()
        finish = "length"
        for i, token in enumerate(tokens):
            if token in eos:
                tokens, finish = tokens[:i], "stop"
                break
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return Sample(text=text, finish_reason=finish, tokens=len(tokens) + (finish == "stop"))

    def _eos_ids(self) -> set[int]:
        ids = getattr(self._model.generation_config, "eos_token_id", None)
        if ids is None:
            ids = self._tokenizer.eos_token_id
        return set(ids if isinstance(ids, list) else [ids])
