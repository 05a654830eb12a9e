"""One round of the arena: a scene, two hidden models in a random left/right order, their answers, one vote.

The round lives on the server (in the browser session's state); the page only ever sees the texts and,
after the vote, the names. The left/right order comes from `secrets` (the OS's randomness): a voter who has
seen earlier rounds' orders cannot work out the next one, as they could from `random`'s Mersenne Twister.
`vote_record()` is the line the vote log gets.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from arena.duel import Answer, Sampling
from arena.scenes import Scene
from engine.rows import prompt_id

SIDES = ("left", "right")


@dataclass
class Round:
    scene: Scene
    baseline: str
    challenger: str
    sampling: Sampling
    endpoint: str  # the public URL (no key, no user info)
    left: str = ""  # the model shown on the left
    right: str = ""
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    answers: dict[str, Answer] = field(default_factory=dict)  # side -> final answer
    vote: str | None = None

    @classmethod
    def start(cls, scene: Scene, baseline: str, challenger: str, sampling: Sampling, endpoint: str) -> Round:
        """A new round with the two models in a random left/right order (`secrets.randbelow`, never `random`)."""
        left, right = (baseline, challenger) if secrets.randbelow(2) == 0 else (challenger, baseline)
        return cls(scene, baseline, challenger, sampling, endpoint, left, right)

    @property
    def models(self) -> tuple[str, str]:
        return self.left, self.right

    @property
    def votable(self) -> bool:
        """Both answers complete without error, and no vote yet."""
        return (self.vote is None and len(self.answers) == 2
                and all(a.phase == "done" for a in self.answers.values()))

    def model_on(self, side: str) -> str:
        return self.left if side == "left" else self.right

    def winner(self, vote: str) -> str | None:
        """The model the vote picked (None for a tie or both bad)."""
        return self.model_on(vote) if vote in SIDES else None

    def vote_record(self, vote: str, session: str) -> dict[str, Any]:
        """The vote log's line for `vote` (left, right, tie or both_bad): "id" first, everything export needs."""
        winner = self.winner(vote)
        loser = None if winner is None else (self.right if winner == self.left else self.left)
        return {
            "id": secrets.token_hex(8),
            "vote": vote,
            "winner": winner,
            "loser": loser,
            "baseline": self.baseline,
            "challenger": self.challenger,
            "prompt": self.scene.prompt,
            "prompt_id": prompt_id(self.scene.prompt),
            "source": self.scene.source,
            "left": _side(self.answers["left"]),
            "right": _side(self.answers["right"]),
            "sampling": self.sampling.to_dict(),
            "endpoint": self.endpoint,
            "round": self.id,
            "session": session,
            "sampled_at": self.started_at,
            "voted_at": datetime.now(UTC).isoformat(),
        }


def _side(answer: Answer) -> dict[str, Any]:
    return {"model": answer.model, "text": answer.text, "finish_reason": answer.finish_reason,
            "first_token_s": answer.first_token_s, "seconds": answer.seconds}
