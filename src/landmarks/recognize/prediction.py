"""What the Recognizer answers for a photo: its best landmark, the runners-up and the nearest reference photos."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Candidate:
    landmark_id: int
    name: str
    score: float


@dataclass
class Neighbour:
    image_id: str
    landmark_id: int
    similarity: float


@dataclass
class Prediction:
    """The best landmark for a photo, its confidence in [0, 1], the runners-up and the nearest reference photos."""

    landmark_id: int
    name: str
    confidence: float
    candidates: list[Candidate] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    known: bool = True  # False when the confidence is below recognize.min_confidence: "no known landmark"
