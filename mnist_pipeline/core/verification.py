"""Does a re-training reproduce a registered version? No MLflow here: flows/verify.py
re-trains and reads the store; this compares.

On the same machine (host) with the same code, a seed fixes every number: validation and
test accuracy must be equal. Elsewhere another CPU's kernels round differently, so each
must fall within the variant's seed spread: TOLERANCE_SPREADS standard deviations of the
accuracies of that configuration's seed runs in the store, or DEFAULT_TOLERANCE where the
store holds fewer than three.
"""

TOLERANCE_SPREADS = 3.0
# Three times the largest standard deviation over five seeds in docs/seeds.md (test
# accuracy of `regularized`: 0.25 points), as a fraction.
DEFAULT_TOLERANCE = 0.0075


def compare(
    recorded: dict[str, float], again: dict[str, float], exact: bool, spread: float | None
) -> tuple[bool, list[str]]:
    """``recorded`` and ``again``: val_accuracy and test_accuracy of the version's run and of
    the re-training; ``spread``: the seed runs' standard deviation of accuracy, if known.
    Returns whether both match, and what the console shows, one comparison a line."""
    tolerance = 0.0 if exact else TOLERANCE_SPREADS * spread if spread else DEFAULT_TOLERANCE
    lines, matches = [], True
    for name in ("val_accuracy", "test_accuracy"):
        difference = again[name] - recorded[name]
        ok = difference == 0 if exact else abs(difference) <= tolerance
        matches &= ok
        rule = "must be equal" if exact else f"allowed ±{100 * tolerance:.2f} pp"
        lines.append(
            f"{name}: recorded {recorded[name]:.4f}, re-trained {again[name]:.4f} "
            f"({100 * difference:+.2f} pp, {rule}): {'matches' if ok else 'DIFFERS'}"
        )
    return matches, lines
