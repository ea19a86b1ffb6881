"""The promotion rule: when a new model version takes the `champion` alias. No MLflow here:
tracking/registry.py gathers the evidence and records the decision.

Every score is on the validation split, with each run's last-epoch weights (the weights
registered); the test split is only reported. A challenger takes the alias from the
champion only if it passes every gate, in this order:

1. ``min_improvement``: its val_accuracy beats the champion's by at least this many
   percentage points;
2. when both have several seeds of their configuration (``reproduce``): the means over
   seeds are compared, and Welch's t-test must find the challenger's mean higher
   (one-sided p < ALPHA);
3. ``max_class_drop``: no digit's validation recall falls by more than this many
   percentage points against the champion (means over seeds where there are several).

The first version of a model has nothing to beat: it takes the alias.
"""

from dataclasses import dataclass

import numpy as np
import scipy.stats

# Defaults, in percentage points, from five seeds per variant (docs/seeds.md). Two seeds of
# one configuration differ in last-epoch val_accuracy by up to 0.17 points (baseline; final
# 0.10): a smaller gain is what a new seed alone gives. Their worst digit's val recall (about
# 600 images a digit) differs by 1.3-1.5 points on average, up to 1.9-2.4 (baseline, final;
# the underfitting regularized net is noisier): a larger fall
# than MAX_CLASS_DROP is more than seed noise.
MIN_IMPROVEMENT = 0.2
MAX_CLASS_DROP = 2.0
ALPHA = 0.05  # a difference is larger than seed noise if Welch's p < ALPHA (here one-sided: higher)


@dataclass(frozen=True)
class Evidence:
    """One side of the comparison: a version and the seed runs of its configuration."""

    version: str
    accuracies: tuple[float, ...]  # last-epoch val_accuracy of each seed run (the version's own first)
    recalls: tuple[tuple[float, ...], ...]  # per seed run: val recall of digits 0..9


@dataclass(frozen=True)
class Gates:
    min_improvement: float = MIN_IMPROVEMENT  # percentage points of val_accuracy
    max_class_drop: float = MAX_CLASS_DROP  # percentage points of any digit's val recall


@dataclass(frozen=True)
class Decision:
    promote: bool
    gate: str  # "first" (no champion), "passed", or the gate that refused
    gain: float  # percentage points of val_accuracy over the champion (means over seeds if several)
    worst_digit: int | None  # the digit whose recall fell most (or rose least)
    worst_drop: float  # percentage points that digit's recall fell (negative: it rose)
    p_value: float | None  # Welch's one-sided p; None with a single run on either side
    reason: str  # one line for the console and the version tag


def decide(challenger: Evidence, champion: Evidence | None, gates: Gates) -> Decision:
    if champion is None:
        return Decision(True, "first", 0.0, None, 0.0, None, "the first version: takes the champion alias")
    seeds = len(challenger.accuracies), len(champion.accuracies)
    seeded = min(seeds) >= 2
    # each side's means over its seed runs, or (a single run on either side) the version's own run
    pick = (lambda runs: np.mean(runs, axis=0)) if seeded else (lambda runs: np.asarray(runs[0]))
    gain = float(100 * (pick(challenger.accuracies) - pick(champion.accuracies)))
    p_value = welch_p(challenger.accuracies, champion.accuracies, alternative="greater") if seeded else None
    basis = f" (means of {seeds[0]} and {seeds[1]} seeds, Welch p={p_value:.2g})" if seeded else ""
    versus = f"{gain:+.3f} pp over version {champion.version}{basis}"
    # the digit whose validation recall fell most, and by how many percentage points; None if either side has none
    worst, drop = None, 0.0
    if challenger.recalls and champion.recalls:
        drops = 100 * (pick(champion.recalls) - pick(challenger.recalls))
        worst, drop = int(np.argmax(drops)), float(np.max(drops))
    if gain < gates.min_improvement:
        gate, why = "min_improvement", f"needs {gates.min_improvement:+.2f}"
    elif seeded and not p_value < ALPHA:
        gate, why = "welch", f"not significant (p >= {ALPHA})"
    elif worst is not None and drop > gates.max_class_drop:
        gate, why = "max_class_drop", f"digit {worst} recall {-drop:+.2f} pp"
    else:
        checked = "no per-digit recall to compare" if worst is None else f"no digit down {gates.max_class_drop:.2f} pp"
        reason = f"{versus}, {checked}: takes the champion alias"
        return Decision(True, "passed", gain, worst, drop, p_value, reason)
    return Decision(False, gate, gain, worst, drop, p_value, f"refused by {gate}: {versus}; {why}")


def welch_p(a, b, alternative: str = "two-sided") -> float:
    """Welch's t-test p-value of ``a``'s mean against ``b``'s (``alternative`` as scipy takes
    it). When neither varies the t statistic is undefined and any difference is real: 0 if
    the two differ the way tested, 1 if not."""
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        differ = a[0] > b[0] if alternative == "greater" else a[0] != b[0]
        return 0.0 if differ else 1.0
    return float(scipy.stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)
