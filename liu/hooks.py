"""How code outside the core plugs into a runner: bar hooks, and the model hook strategies read.

The core (runner, strategy, consumer) never imports `liu.ml`: the ML scorer
(`liu.ml.inference.ModelScorer`) satisfies `ModelHook` structurally, and the
top layer (`liu.engine.build_runner`) appends it to `runner.bar_hooks` and
hands it to the strategies' contexts and to the consumer. Anything else with
the same shape (a test double, another model runtime) plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from liu.events import Bar

BarHook = Callable[[Bar], None]
"""Called with each closed bar after its features update and before the strategies see it."""


class ModelHook(Protocol):
    """A bar hook that scores models: what strategies read from it, and what the consumer reports."""

    def __call__(self, bar: Bar) -> None: ...

    def latest(self, name: str) -> dict[str, Any]:
        """Model `name`'s outputs at each symbol's latest closed bar (None while warming up)."""
        ...

    def classes(self, name: str) -> tuple:
        """Class labels in probability order, or ("value",) for a regressor."""
        ...

    def version(self, name: str) -> int:
        """The version of model `name` scoring now."""
        ...

    def stats(self) -> dict[str, dict]:
        """Per model: bars seen, warming up, scored per version, errors, refused versions."""
        ...
