"""The promotion rule on its own: the gates, in order, and the seeds; the live gates and their bound."""

from dataclasses import replace

import numpy as np
import pytest

from mnist_pipeline.core.live import Window
from mnist_pipeline.core.promotion_rule import (
    ALPHA,
    Evidence,
    Gates,
    LiveEvidence,
    LiveGates,
    decide,
    decide_live,
    paired_difference,
)

GATES = Gates(min_improvement=0.15, max_class_drop=1.0)


def single(version: str, accuracy: float, recalls: dict[int, float] | None = None) -> Evidence:
    per_digit = tuple((recalls or {}).get(d, accuracy) for d in range(10))
    return Evidence(version, (accuracy,), (per_digit,))


def test_the_first_version_takes_the_alias():
    decision = decide(single("1", 0.5), None, Gates(min_improvement=50))
    assert decision.promote and decision.gate == "first"


@pytest.mark.parametrize(
    "challenger, promote, gate",
    [
        (single("2", 0.9814), False, "min_improvement"),  # +0.14 pp
        (single("2", 0.9850, {3: 0.969}), False, "max_class_drop"),  # +0.50 pp, digit 3 -1.10 pp
        (single("2", 0.9850, {3: 0.9760}), True, "passed"),  # digit 3 -0.40 pp: allowed
        (single("2", 0.9950), True, "passed"),
    ],
)
def test_single_runs_pass_every_gate_or_name_the_one_that_refused(challenger, promote, gate):
    decision = decide(challenger, single("1", 0.980), GATES)
    assert (decision.promote, decision.gate) == (promote, gate)
    assert decision.p_value is None and "seeds" not in decision.reason


def test_with_require_shadow_a_version_that_passes_is_left_to_promote():
    shadowed = replace(GATES, require_shadow=True)
    left = decide(single("2", 0.9950), single("1", 0.980), shadowed)
    assert (left.promote, left.gate) == (False, "require_shadow")
    assert left.reason.endswith("passes, stays challenger until `promote` moves the champion alias")
    assert decide(single("2", 0.9814), single("1", 0.980), shadowed).gate == "min_improvement"  # refused as before
    assert decide(single("1", 0.5), None, shadowed).promote  # nothing to shadow: the first takes the alias


def test_the_reason_names_the_gate_the_gain_and_the_digit():
    decision = decide(single("2", 0.9850, {3: 0.969}), single("1", 0.980), GATES)
    assert decision.reason == "refused by max_class_drop: +0.500 pp over version 1; digit 3 recall -1.10 pp"
    assert decision.worst_digit == 3 and decision.worst_drop == pytest.approx(1.1)
    assert decide(single("2", 0.5), single("1", 0.4), Gates(min_improvement=50)).gate == "min_improvement"


def test_several_seeds_on_both_sides_compare_means_with_welch():
    def seeds(version, accuracies):
        return Evidence(version, accuracies, tuple(tuple([a] * 10) for a in accuracies))

    champion = seeds("1", (0.980, 0.981, 0.979))
    noisy = decide(seeds("2", (0.990, 0.978, 0.980)), champion, GATES)  # mean +0.27 pp, spread 1.2 pp
    assert (noisy.promote, noisy.gate) == (False, "welch") and noisy.p_value >= ALPHA
    clear = decide(seeds("3", (0.985, 0.986, 0.984)), champion, GATES)
    assert clear.promote and clear.p_value < ALPHA and clear.gain == pytest.approx(0.5)
    assert "means of 3 and 3 seeds, Welch p=" in clear.reason
    one_side = decide(seeds("4", (0.990,)), champion, GATES)  # a single run against seeds: its own run only
    assert one_side.p_value is None and one_side.gain == pytest.approx(1.0)


def test_versions_without_per_digit_recall_skip_that_gate_and_say_so():
    old = Evidence("1", (0.980,), ())
    decision = decide(single("2", 0.990), old, GATES)
    assert decision.promote and "no per-digit recall to compare" in decision.reason


# Newcombe (1998), Stat Med 17:2635, method 10: its examples (both, only first, only second,
# neither) and the published 95% limits of the difference, first minus second.
@pytest.mark.parametrize(
    "table, limits",
    [
        ((36, 12, 2, 0), (0.0569, 0.3404)),
        ((18, 12, 2, 18), (0.0562, 0.3290)),
        ((53, 0, 0, 1), (-0.0729, 0.0729)),
        ((0, 30, 0, 0), (0.8395, 1.0)),
    ],
)
def test_the_paired_interval_gives_newcombes_published_limits(table, limits):
    difference, lower, upper = paired_difference(*table)
    assert difference == (table[1] - table[2]) / sum(table)
    assert (lower, upper) == pytest.approx(limits, abs=5e-5)


# A challenger that passes every live gate: 10,000 labelled images, +0.4 pp, p99 x1.25.
GOOD = LiveEvidence("3", "2", "require_shadow", 20_000, 0, 0.99, (0.004, 0.005), (9800, 20, 60, 120))


@pytest.mark.parametrize(
    "change, gate",
    [
        ({}, "passed"),
        ({"offline_gate": "min_improvement", "errors": 1}, "offline"),  # the first gate that refuses names it
        ({"offline_gate": ""}, "offline"),  # a version with no offline decision recorded
        ({"shadowed": 999}, "min_shadow_images"),
        ({"errors": 1}, "challenger_errors"),
        ({"p99_seconds": (0.004, 0.0061)}, "max_latency_ratio"),
        ({"paired": (980, 2, 6, 11)}, "min_labelled_images"),  # 999
        ({"paired": (9800, 100, 20, 80)}, "max_accuracy_drop"),  # -0.8 pp
        ({"paired": (980, 10, 10, 0)}, "max_accuracy_drop"),  # equal, but 1000 labels bound it at -0.74 pp
    ],
)
def test_each_live_gate_refuses_in_its_turn(change, gate):
    decision = decide_live(replace(GOOD, **change), LiveGates())
    assert (decision.promote, decision.gate) == (gate == "passed", gate)


def test_the_live_reason_gives_the_figures():
    decision = decide_live(replace(GOOD, paired=(9800, 100, 20, 80)), LiveGates())
    assert decision.difference == pytest.approx(-0.8) and decision.latency_ratio == pytest.approx(1.25)
    assert decision.reason == (
        "refused by max_accuracy_drop: version 3 shadowing version 2: 20000 images, 0 errors, agreement 99.00%, "
        "p99 4.00/5.00 ms (x1.25), 10000 labelled (50.0%): accuracy -0.80 pp, 95% lower bound -0.99 pp; "
        "the bound needs to be above -0.20 pp"
    )


def test_without_required_labels_agreement_latency_and_errors_decide_alone():
    unlabelled = replace(GOOD, paired=(0, 0, 0, 0))
    decision = decide_live(unlabelled, LiveGates(min_labelled_images=0))
    assert decision.promote and decision.reason.endswith("on agreement, latency and errors alone (no labels required)")
    assert "no labels" in decision.reason and decide_live(unlabelled, LiveGates()).gate == "min_labelled_images"


def test_the_live_evidence_of_a_window():
    window = Window()
    for seconds in (0.001, 0.002, 0.004):
        classes = window.answer(np.eye(10)[[1, 2]], seconds)
        window.label(np.array([1, 3]), classes, window.shadow(classes, np.eye(10)[[1, 3]], 2 * seconds))
    evidence = LiveEvidence.of(window, "3", "2", offline_gate="passed")
    assert (evidence.shadowed, evidence.errors, evidence.agreement) == (6, 0, 0.5)
    assert evidence.paired == (3, 0, 3, 0)  # both right on digit 1; only the challenger on 3
    assert 2 * 10**-0.1 < evidence.p99_seconds[1] / evidence.p99_seconds[0] < 2 * 10**0.1


def test_the_live_bound_misses_the_true_difference_one_time_in_twenty():
    # 5000 labelled images a draw; true accuracy difference -0.2 pp (only champion 1.2%, only challenger 1.0%)
    tables = np.random.default_rng(0).multinomial(5000, (0.97, 0.012, 0.010, 0.008), size=1000)
    bounds = [decide_live(replace(GOOD, paired=tuple(t)), LiveGates()).lower_bound for t in tables]
    assert 0.035 < np.mean(np.array(bounds) > -0.2) < 0.065
