"""A claim's pass rule, fixed before the run: a predicate over the measured numbers and a text,
both made from one set of named thresholds.

The text names every threshold the predicate takes, so the two cannot drift apart: a `Rule` is
built only when they agree. `claims` gives each of the paper's claims one; the thresholds are
`scorecard`'s constants.
"""
from __future__ import annotations

import inspect
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional


@dataclass(frozen=True, repr=False)
class Rule:
    """A pass rule: `holds(ours, **thresholds)` and `text.format(**thresholds, **settings)`.

    `settings` are the measure's own parameters the text names (τ, a count of codes), never
    compared against. Built only when the text's fields are exactly the thresholds and the
    settings, and the predicate takes exactly the thresholds."""
    text: str
    holds: Callable[..., bool]
    thresholds: Mapping[str, float] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        fields = {name for _, name, _, _ in string.Formatter().parse(self.text) if name}
        taken = set(list(inspect.signature(self.holds).parameters)[1:])
        if fields != set(self.thresholds) | set(self.settings) or taken != set(self.thresholds):
            raise ValueError(f"rule {self.text!r} names {sorted(fields)} and its predicate takes {sorted(taken)}; "
                             f"both must be its thresholds {sorted(self.thresholds)} (the text also its settings)")

    def __str__(self) -> str:
        return self.text.format(**self.thresholds, **self.settings)

    def __repr__(self) -> str:
        return f"Rule({str(self)!r})"

    def __call__(self, ours: dict) -> Optional[bool]:
        """The verdict on the measured numbers; None when they are not measured."""
        try:
            return bool(self.holds(ours, **self.thresholds))
        except (KeyError, TypeError):
            return None
