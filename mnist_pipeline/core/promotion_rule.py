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

With ``require_shadow`` a version that passes becomes ``challenger`` instead, and `promote`
moves ``champion`` to it on live evidence (decide_live, its gates in LiveGates).
"""

from dataclasses import dataclass

import numpy as np

from mnist_pipeline.core.live import Window, quantile

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
    require_shadow: bool = False  # a version that passes stays challenger until `promote` (decide_live)


@dataclass(frozen=True)
class Decision:
    promote: bool
    gate: str  # "first" (no champion), "passed", "require_shadow" (passed, left to promote), or the gate that refused
    gain: float  # percentage points of val_accuracy over the champion (means over seeds if several)
    worst_digit: int | None  # the digit whose recall fell most (or rose least)
    worst_drop: float  # percentage points that digit's recall fell (negative: it rose)
    p_value: float | None  # Welch's one-sided p; None with a single run on either side
    reason: str  # one line for the console and the version tag


def decide(challenger: Evidence, champion: Evidence | None, gates: Gates) -> Decision:
    """The offline gates; with ``gates.require_shadow`` a challenger that passes them is left to `promote`."""
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
        if gates.require_shadow:
            reason = f"{versus}, {checked}: passes, stays challenger until `promote` moves the champion alias"
            return Decision(False, "require_shadow", gain, worst, drop, p_value, reason)
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
    import scipy.stats  # here: its 1 s import would delay every command's start (the CLI imports this module)

    return float(scipy.stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


OFFLINE_PASSED = ("first", "passed", "require_shadow")  # Decision.gate of a version the offline gates passed
# Defaults of the live gates (`promote`).
MIN_SHADOW_IMAGES = 1000  # images the challenger scored on live traffic
MIN_LABELLED_IMAGES = 1000  # labelled images both scored; 0: promote on agreement, latency and errors alone
MAX_ACCURACY_DROP = 0.2  # percentage points: the same margin as MIN_IMPROVEMENT, the other way
MAX_LATENCY_RATIO = 1.5  # challenger's p99 over the champion's


@dataclass(frozen=True)
class LiveEvidence:
    """What the serving runs of a pair of versions saw, for the live gates."""

    version: str  # the challenger's
    champion: str  # the champion's version
    offline_gate: str  # the offline gates' Decision.gate on the challenger ('' : none recorded)
    shadowed: int  # images the challenger scored
    errors: int  # shadowed requests the challenger failed
    agreement: float  # share of the shadowed images both classed alike (nan without any)
    p99_seconds: tuple[float, float]  # champion's, challenger's compute time of a request
    # labelled images both scored: both right, only the champion, only the challenger, neither
    paired: tuple[int, int, int, int]

    @classmethod
    def of(cls, window: Window, version: str, champion: str, offline_gate: str) -> "LiveEvidence":
        """The evidence in a pair's windows, summed."""
        shadowed, table = int(window.agreement.sum()), window.paired
        agreement = np.trace(window.agreement) / shadowed if shadowed else np.nan
        p99 = quantile(window.champion.latency, 0.99), quantile(window.challenger.latency, 0.99)
        paired = int(table[1, 1]), int(table[1, 0]), int(table[0, 1]), int(table[0, 0])
        return cls(version, champion, offline_gate, shadowed, window.errors, float(agreement), p99, paired)


@dataclass(frozen=True)
class LiveGates:
    min_shadow_images: int = MIN_SHADOW_IMAGES
    min_labelled_images: int = MIN_LABELLED_IMAGES
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # percentage points of accuracy on the labelled images both scored
    max_latency_ratio: float = MAX_LATENCY_RATIO


@dataclass(frozen=True)
class LiveDecision:
    promote: bool
    gate: str  # "passed", or the gate that refused
    difference: float  # percentage points of accuracy, challenger minus champion, on the labelled images both scored
    lower_bound: float  # its one-sided 95% lower confidence bound (pp); nan without labels
    latency_ratio: float  # challenger's p99 over the champion's
    reason: str  # one line for the console and the version tag


def decide_live(evidence: LiveEvidence, gates: LiveGates) -> LiveDecision:
    """The live gates in order: offline, min_shadow_images, challenger_errors, max_latency_ratio,
    min_labelled_images, max_accuracy_drop (the lower bound above -max_accuracy_drop)."""
    e, labelled = evidence, sum(evidence.paired)
    both, only_champion, only_challenger, neither = e.paired
    ratio = e.p99_seconds[1] / e.p99_seconds[0]
    # one-sided 95% lower bound: the lower end of the two-sided 90% interval
    difference, lower, _ = (
        paired_difference(both, only_challenger, only_champion, neither, level=1 - 2 * ALPHA)
        if labelled
        else (np.nan,) * 3
    )
    difference, lower = 100 * difference, 100 * lower
    p99 = "/".join(f"{1000 * s:.2f}" for s in e.p99_seconds)
    accuracy = f"{labelled} labelled ({labelled / max(e.shadowed, 1):.1%}): accuracy {difference:+.2f} pp"
    figures = (
        f"version {e.version} shadowing version {e.champion}: {e.shadowed} images, {e.errors} errors, "
        f"agreement {e.agreement:.2%}, p99 {p99} ms (x{ratio:.2f}), "
        + (f"{accuracy}, 95% lower bound {lower:+.2f} pp" if labelled else "no labels")
    )
    checks = [  # (gate, refused, why)
        (
            "offline",
            e.offline_gate not in OFFLINE_PASSED,
            f"the offline gates did not pass it ({e.offline_gate or 'no decision recorded'})",
        ),
        ("min_shadow_images", e.shadowed < gates.min_shadow_images, f"needs {gates.min_shadow_images} images"),
        ("challenger_errors", e.errors > 0, "needs none"),
        ("max_latency_ratio", not ratio <= gates.max_latency_ratio, f"p99 needs x{gates.max_latency_ratio:.2f}"),
        ("min_labelled_images", labelled < gates.min_labelled_images, f"needs {gates.min_labelled_images} labels"),
        (
            "max_accuracy_drop",
            gates.min_labelled_images > 0 and not lower > -gates.max_accuracy_drop,
            f"the bound needs to be above {-gates.max_accuracy_drop:+.2f} pp",
        ),
    ]
    refused = [(gate, why) for gate, failed, why in checks if failed]
    if refused:
        gate, why = refused[0]
        return LiveDecision(False, gate, difference, lower, ratio, f"refused by {gate}: {figures}; {why}")
    alone = "" if gates.min_labelled_images else " on agreement, latency and errors alone (no labels required)"
    return LiveDecision(True, "passed", difference, lower, ratio, f"{figures}: takes the champion alias{alone}")


def paired_difference(both: int, only_first: int, only_second: int, neither: int, level: float = 0.95):
    """The difference of two paired proportions (first minus second) and its two-sided ``level``
    confidence interval, from the 2x2 table of who got each item right: (difference, lower, upper).

    Newcombe's hybrid score interval for paired proportions (Newcombe 1998, Stat Med 17:2635,
    method 10): each proportion's Wilson interval, their distances from the estimates combined
    with phi, the table's correlation corrected for continuity (0 when a margin is empty)."""
    n = both + only_first + only_second + neither
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    (l1, u1), (l2, u2) = (wilson(k, n, level) for k in (both + only_first, both + only_second))
    margins = np.prod([both + only_first, only_second + neither, both + only_second, only_first + neither], dtype=float)
    b = both * neither - only_first * only_second
    c = b - n / 2 if b > n / 2 else min(b, 0)
    phi = c / np.sqrt(margins) if margins else 0.0
    d = (only_first - only_second) / n  # p1 - p2, without its rounding
    lower = d - np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    upper = d + np.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    return float(d), float(lower), float(upper)


def wilson(k: int, n: int, level: float) -> tuple[float, float]:
    """Wilson's score interval for k successes in n, without continuity correction."""
    import scipy.stats  # here, as in welch_p

    interval = scipy.stats.binomtest(k, n).proportion_ci(level, method="wilson")
    return interval.low, interval.high
