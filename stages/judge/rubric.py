"""The offline judge's rubric: a score a reader can check, for the show's script format.

Deterministic and free; the local profile's stand-in for GPT-5 (which judges voice and humour, not this). For
each completion, over its non-empty lines:
- format: the share of lines that are `[CHARACTER] text` with a character of the show (the system prompt's
  four, plus the recurring ones below) and dialogue as the text (a word, no further `[...]` tag: one speaker per
  line, as the show's scripts are written), minus lines that only repeat a line of the scene;
- scene: +0.2 when at least one speaker is someone already in the scene (it continues this scene);
- assistant talk: -0.5 when the text talks about the task instead of writing it ("Sure! Here is a scene...",
  "I hope this helps", "As an AI").
The total ranks the candidates; equal totals are broken by similarity to the row's reference completion
(stages/judge/reference.py), and candidates equal on both keep their shown order (a tie in the A/B).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stages.judge.reference import features, similarity

CHARACTERS = frozenset({
    "JERRY", "GEORGE", "ELAINE", "KRAMER", "NEWMAN", "FRANK", "ESTELLE", "PUDDY", "JACKIE", "MORTY", "HELEN",
    "UNCLE LEO", "SUSAN", "PETERMAN", "STEINBRENNER", "MR. PITT", "WHATLEY", "BANIA", "MICKEY", "JACK",
})
SCENE_BONUS = 0.2
ASSISTANT_PENALTY = 0.5
_LINE = re.compile(r"^\[([A-Z][A-Z .']*)\]\s+([^\[\]]*[A-Za-z]{2}[^\[\]]*)$")
_ASSISTANT = re.compile(
    r"\b(sure[,!.]|certainly[,!.]|here is|here's|here are|i hope|as an ai|let me know|feel free|"
    r"continue the scene|the scene continues|dialogue:|in this scene|i'd be happy|i can help)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RubricScore:
    """One completion's rubric: the parts and the total."""

    lines: int  # non-empty lines
    script_lines: int  # `[KNOWN CHARACTER] text` lines that are not a copy of a scene line
    in_scene: bool
    assistant_talk: bool

    @property
    def total(self) -> float:
        fmt = self.script_lines / self.lines if self.lines else 0.0
        return round(fmt + SCENE_BONUS * self.in_scene - ASSISTANT_PENALTY * self.assistant_talk, 6)

    def describe(self) -> str:
        return (f"{self.total:.2f} (script lines {self.script_lines}/{self.lines}"
                f"{', in the scene' if self.in_scene else ''}{', assistant talk' if self.assistant_talk else ''})")


def speakers_and_lines(text: str) -> tuple[set[str], set[str]]:
    """The known characters speaking in `text` and its lines (normalised), for the scene checks."""
    speakers, lines = set(), set()
    for raw in text.splitlines():
        line = raw.strip()
        if m := _LINE.match(line):
            if m.group(1).strip() in CHARACTERS:
                speakers.add(m.group(1).strip())
            lines.add(_norm(line))
    return speakers, lines


def _norm(line: str) -> str:
    return " ".join(line.lower().split())


def score(scene: str, completion: str) -> RubricScore:
    """The rubric of `completion` continuing `scene` (the scene's text: its user message)."""
    scene_speakers, scene_lines = speakers_and_lines(scene)
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    script, speakers = 0, set()
    for line in lines:
        m = _LINE.match(line)
        if m and m.group(1).strip() in CHARACTERS and _norm(line) not in scene_lines:
            script += 1
            speakers.add(m.group(1).strip())
    return RubricScore(
        lines=len(lines),
        script_lines=script,
        in_scene=bool(speakers & scene_speakers),
        assistant_talk=bool(_ASSISTANT.search(completion)),
    )


def scene_text(prompt: object) -> str:
    """The scene a prompt holds: its user messages (a chat prompt) or the string itself."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user")
    return ""


def rank_by_rubric(prompt: object, reference: str, shown: list[str]) -> tuple[list[int], list[RubricScore],
                                                                              list[float]]:
    """(shown positions best first, rubric per position, reference similarity per position)."""
    scene = scene_text(prompt)
    rubrics = [score(scene, text) for text in shown]
    ref = features(reference)
    sims = [round(similarity(ref, features(text)), 6) for text in shown]
    order = sorted(range(len(shown)), key=lambda p: (-rubrics[p].total, -sims[p], p))
    return order, rubrics, sims
