"""How often the experiments' noise rule calls a difference between two identical conditions measurable.

What it measures: for 1 to 5 seeds per condition, 20,000 pairs of conditions whose per-seed values are drawn from the
same normal distribution (seeded, so the figures repeat exactly), judged by `cnnlab.tasks.experiments.common.compare`
as the reports judge them; the share called measurable is the rule's false-alarm rate per comparison. Pure
arithmetic: no hardware dependence, a few seconds on one CPU core.

Run: .venv/bin/python benchmarks/noise_rule.py   (docs/EXPERIMENTS.md quotes its output)
"""

from __future__ import annotations

import random

from cnnlab.tasks.experiments import common

PAIRS = 20_000


def false_alarms(seeds: int, pairs: int = PAIRS) -> tuple[float, float]:
    """Share of identical-condition pairs called measurable: by the rule alone, and as the reports apply it."""
    draw = random.Random(0)
    rule_alone = reported = 0
    for _ in range(pairs):
        a = common.stat([draw.gauss(0, 1) for _ in range(seeds)])
        b = common.stat([draw.gauss(0, 1) for _ in range(seeds)])
        comparison = common.compare(a, b)
        reported += comparison.measurable
        ranges_apart = min(a.values) > max(b.values) or min(b.values) > max(a.values)
        rule_alone += seeds > 1 and ranges_apart and abs(comparison.difference) > comparison.noise
    return rule_alone / pairs, reported / pairs


if __name__ == "__main__":
    print(f"seeds  rule alone  reported (no claim from fewer than {common.MIN_SEEDS} seeds)")
    for seeds in range(1, 6):
        alone, reported = false_alarms(seeds)
        print(f"{seeds:5d}  {alone:10.1%}  {reported:8.1%}")
