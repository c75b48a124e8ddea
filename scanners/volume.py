"""Example scanner: the most liquid symbols in a price range."""

from __future__ import annotations

from pydantic import PositiveInt

from liu.scanner import ScanContext, Scanner, ScannerConfig


class VolumeConfig(ScannerConfig):
    """Settings for `VolumeScanner`."""

    top: PositiveInt = 10
    min_price: float = 5.0
    max_price: float = 1_000.0


class VolumeScanner(Scanner):
    """Picks the `top` symbols by average volume whose price is within [min_price, max_price]."""

    Config = VolumeConfig

    def scan(self, ctx: ScanContext) -> list[str]:
        cfg = self.config
        eligible = [s for s, info in ctx.universe.items() if cfg.min_price <= info.price <= cfg.max_price]
        eligible.sort(key=lambda s: (-ctx.universe[s].avg_volume, s))
        return eligible[: cfg.top]
