"""The truth rule: what a frame's human labels say its class is. The one place this rule lives.

A frame's truth is the **majority of its non-``unsure`` labels that name a known class**. Labels naming a
class outside the model's class list do not vote (they are counted as invalid). A frame has no truth when
its labels are all ``unsure`` (status ``"unsure"``), when none names a known class (``"unknown_class"``),
or when the top two classes tie (``"tie"``). The evaluator excludes such frames and counts them; retraining
leaves them out of the production set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from pipeline.types import UNSURE

TruthStatus = Literal["ok", "unsure", "tie", "unknown_class"]
RULE = "majority of non-unsure labels; all-unsure, tied and unknown-class frames excluded"


@dataclass(frozen=True)
class Truth:
    """One frame's truth: ``label`` is None unless ``status == "ok"``; ``invalid`` counts labels outside the classes."""

    label: str | None
    status: TruthStatus
    invalid: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def majority_truth(labels: Iterable[str], classes: Collection[str]) -> Truth:
    """The truth of one frame from its labels (in any order), under the rule in this module's docstring."""
    votes: Counter[str] = Counter()
    invalid = 0
    any_unsure = False
    for label in labels:
        if label == UNSURE:
            any_unsure = True
        elif label in classes:
            votes[label] += 1
        else:
            invalid += 1
    if not votes:
        return Truth(None, "unsure" if any_unsure else "unknown_class", invalid)
    top = votes.most_common(2)
    if len(top) > 1 and top[0][1] == top[1][1]:
        return Truth(None, "tie", invalid)
    return Truth(top[0][0], "ok", invalid)
