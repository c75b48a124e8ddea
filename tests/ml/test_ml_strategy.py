"""strategies/ml_vote.py: weighted vote with a confidence gate, checked against the models' own probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from liu.brokers.account import Account
from liu.engine import build_runner
from liu.errors import PluginError
from liu.ml.pipeline import FeaturePipeline
from liu.ml.spec import load_spec
from liu.plan import parse_plan
from tests.ml.helpers import minute_bars, place, train, wire, write_spec

REPO = Path(__file__).resolve().parents[2]
VOTE = str(REPO / "strategies" / "ml_vote.py")


class Orders:
    def __init__(self) -> None:
        self.orders = []

    def add_order(self, order) -> None:
        self.orders.append(order)

    def update_order(self, order) -> None:
        pass

    def add_fill(self, fill) -> None:
        pass


def two_models(tmp_path: Path, bars: dict) -> tuple[list[Path], list]:
    """Two specs with different features, a gradient-boosting and a logistic model, pinned at v1."""
    a = write_spec(tmp_path, "model_a")
    b = write_spec(tmp_path, "model_b")
    b.write_text(
        b.read_text()
        .replace("timeperiod = 7", "timeperiod = 11")
        .replace('of = ["close"]\nn = 3', 'of = ["close"]\nn = 5')
    )
    est_a, onnx_a = train(a, bars, GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0))
    est_b, onnx_b = train(b, bars, LogisticRegression(max_iter=500))
    place(a, 1, onnx_a)
    place(b, 1, onnx_b)
    return [a, b], [est_a, est_b]


def vote_plan(tmp_path: Path, specs: list[Path], weights: list[float], **config):
    models = [{"spec": str(s), "version": 1, "weight": w} for s, w in zip(specs, weights, strict=True)]
    return parse_plan(
        {
            "strategies": [
                {"name": "vote", "file": VOTE, "class": "MlVote", "models": models, "config": config}
            ]
        },
        base_dir=tmp_path,
    )


@pytest.mark.parametrize(("threshold", "min_agree", "allow_short"), [(0.55, 1, False), (0.52, 2, True)])
async def test_vote_trades_exactly_where_the_weighted_probabilities_say(
    tmp_path, threshold, min_agree, allow_short
):
    bars = minute_bars(("SPY", "BAC"), n=500)
    specs, ests = two_models(tmp_path, bars)
    weights = [1.0, 0.5]
    plan = vote_plan(
        tmp_path,
        specs,
        weights,
        threshold=threshold,
        min_agree=min_agree,
        allow_short=allow_short,
        allocation=0.05,
        stop_pct=0.0,  # no bracket stop-loss: this test is about the vote, and a stop would close positions
    )
    sink = Orders()
    runner = build_runner(plan, Account(1e6), {}, order_prefix="t", sink=sink)
    runner.assign(bars)
    await runner.start()
    await runner.process(wire(bars))
    assert runner.counts["strategy_errors"] == 0

    # The same decisions, from sklearn's predict_proba on the batch features (binary labels: P(down) = 1 - P(up)).
    expected = []
    for sym, b in bars.items():
        probs = []
        for spec, est in zip(specs, ests, strict=True):
            x = FeaturePipeline(load_spec(spec)).batch(b)
            p = np.full(len(x), np.nan)
            ok = ~np.isnan(x).any(axis=1)
            p[ok] = est.predict_proba(x[ok])[:, list(est.classes_).index(1.0)]
            probs.append(p)
        held = 0  # -1 short, 0 flat, 1 long; orders fill at the next bar, before its decision
        for i, ts in enumerate(b["ts"]):
            pu = [p[i] for p in probs]
            if any(np.isnan(pu)):
                continue
            p_up = sum(w * q for w, q in zip(weights, pu, strict=True)) / sum(weights)
            long = p_up >= threshold and sum(q >= threshold for q in pu) >= min_agree
            short = 1 - p_up >= threshold and sum(1 - q >= threshold for q in pu) >= min_agree
            if long and held <= 0:
                expected += [(sym, int(ts), "buy")] * (2 if held < 0 else 1)
                held = 1
            elif short and held >= 0:
                expected += [(sym, int(ts), "sell")] * ((held > 0) + allow_short)
                held = -1 if allow_short else 0
    got = sorted((o.symbol, o.submitted_ts, o.side) for o in sink.orders)
    assert got == sorted(expected)
    assert {side for _, _, side in got} == {"buy", "sell"}, "the vote should both enter and exit"
    assert all(o.status != "rejected" for o in sink.orders)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"min_agree": 0}, "min_agree"),
        ({"treshold": 0.6}, "treshold"),
    ],
)
def test_bad_config_is_refused(tmp_path, config, expected):
    bars = minute_bars(n=100)
    specs, _ = two_models(tmp_path, bars)
    plan = vote_plan(tmp_path, specs, [1.0, 1.0], **config)
    with pytest.raises(PluginError, match=expected):
        build_runner(plan, Account(1e6), {}, order_prefix="t")


async def test_min_agree_above_the_number_of_models_is_reported(tmp_path):
    bars = minute_bars(n=100)
    specs, _ = two_models(tmp_path, bars)
    runner = build_runner(
        vote_plan(tmp_path, specs, [1.0, 1.0], min_agree=3), Account(1e6), {}, order_prefix="t"
    )
    await runner.start()
    assert runner.counts["strategy_errors"] == 1  # on_start refused: min_agree=3 but only 2 models
