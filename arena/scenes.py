"""The scenes the arena offers: the show's system brief, and the held-out prompts to draw from.

A round's prompt is the show's system brief followed by the scene as one user message, the shape of every row
in the data. A held-out row drawn and left unedited keeps its own prompt exactly, so its prompt id (and with
it the train/val side `split` gives its pairs) is the row's own.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from engine.rows import Reject, parse_line, validate_prompt_row

log = logging.getLogger(__name__)

SAMPLE_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "sample" / "prompts.jsonl"

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Scene:
    """A prompt as the arena shows it: `text` goes in the scene box, `prompt` is what the models get."""

    text: str
    prompt: Messages
    source: str  # "held-out" (drawn from the held-out file) or "typed"


@dataclass(frozen=True)
class SceneBook:
    """The system brief and the held-out scenes of one file."""

    brief: str
    held_out: tuple[Scene, ...]
    path: Path

    def draw(self, rng: random.Random) -> Scene:
        return rng.choice(self.held_out)

    def scene_for(self, text: str) -> Scene:
        """The round's scene for the text in the box: a held-out row when the text is one, unchanged."""
        text = text.strip()
        if not text:
            raise ValueError("the scene box is empty: type a scene (e.g. [JERRY] ...) or draw a held-out prompt")
        for scene in self.held_out:
            if scene.text == text:
                return scene
        return Scene(text, [{"role": "system", "content": self.brief}, {"role": "user", "content": text}], "typed")


def load_scenes(path: Path | None = None) -> SceneBook:
    """Read the held-out prompts (a prompts file or a split's val.jsonl; default: the project's sample).

    The brief is the system message of the first row that has one. Raises ConfigError naming the file
    when it is missing, has no usable row, or carries no system brief.
    """
    path = Path(path) if path is not None else SAMPLE_PROMPTS
    if not path.is_file():
        raise ConfigError(f"held-out prompts file {path} does not exist; pass --held-out with a split's val.jsonl "
                          f"or a prompts file such as {SAMPLE_PROMPTS}")
    scenes: list[Scene] = []
    brief = None
    bad = 0
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        row = parse_line(str(path), lineno, raw, validate_prompt_row)
        if isinstance(row, Reject):
            bad += 1
            log.warning("skipping held-out row %s", row.where)
            continue
        prompt = row.data["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        system = next((m["content"] for m in prompt if m["role"] == "system"), None)
        brief = brief or system
        text = "\n".join(m["content"] for m in prompt if m["role"] != "system").strip()
        if text:
            scenes.append(Scene(text, prompt, "held-out"))
    if not scenes:
        raise ConfigError(f"{path} has no usable prompt rows ({bad} invalid); each row needs a \"prompt\" "
                          "(a message list or a string)")
    if brief is None:
        brief = _sample_brief(path)
    log.info("held-out scenes: %d from %s", len(scenes), path)
    return SceneBook(brief, tuple(scenes), path)


def _sample_brief(path: Path) -> str:
    if path == SAMPLE_PROMPTS:
        raise ConfigError(f"{path} has no system message to take the show's brief from")
    return load_scenes(SAMPLE_PROMPTS).brief
