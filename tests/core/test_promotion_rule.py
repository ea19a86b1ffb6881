"""The promotion rule on its own: the gates, in order, and the seeds."""

import pytest

from mnist_pipeline.core.promotion_rule import ALPHA, Evidence, Gates, decide

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
