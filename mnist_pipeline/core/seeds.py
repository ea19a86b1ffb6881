"""Seed statistics for `reproduce`: is a difference between variants larger than seed noise?

Pure pandas/SciPy on a table of finished runs (one row per variant and seed); the runs
themselves are trained and logged by flows/reproduce.py.
"""

import itertools

import numpy as np
import pandas as pd

from mnist_pipeline.core.promotion_rule import ALPHA, welch_p  # the promotion gate's test, here two-sided


def seed_table(results: pd.DataFrame, study: dict[str, float]) -> pd.DataFrame:
    """Per variant: test accuracy mean, std (ddof 1), min, max over seeds, and the study's
    figure with how far it lies from the mean in standard deviations."""
    grouped = results.groupby("variant", sort=False)["test_accuracy"]
    table = grouped.agg(seeds="count", mean="mean", std="std", min="min", max="max")
    table["study"] = [study[name] for name in table.index]
    table["study_minus_mean"] = table["study"] - table["mean"]
    table["study_within_min_max"] = (table["study"] >= table["min"]) & (table["study"] <= table["max"])
    return table.reset_index()


def pairwise(results: pd.DataFrame) -> pd.DataFrame:
    """Every pair of variants: difference of mean test accuracy, Welch's t-test p-value and
    whether the difference is larger than the seed noise (p < ALPHA)."""
    by_variant = {name: rows["test_accuracy"].to_numpy() for name, rows in results.groupby("variant", sort=False)}
    rows = []
    for (a, x), (b, y) in itertools.combinations(by_variant.items(), 2):
        p = welch_p(x, y) if len(x) >= 2 and len(y) >= 2 else np.nan  # one seed: no noise estimate
        rows.append((a, b, float(x.mean() - y.mean()), p, bool(p < ALPHA)))
    return pd.DataFrame(rows, columns=["a", "b", "mean_a_minus_b", "p_value", "larger_than_seed_noise"])


def markdown(table: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """The two tables as docs/seeds.md and the parent run show them (accuracy in %)."""
    shown = pd.DataFrame(
        {
            "variant": table["variant"],
            "seeds": table["seeds"],
            "test accuracy % (mean ± std)": [
                f"{m:.2%} ± {s:.2%}" for m, s in zip(table["mean"], table["std"].fillna(0))
            ],
            "min %": (100 * table["min"]).round(2),
            "max %": (100 * table["max"]).round(2),
            "study %": (100 * table["study"]).round(2).astype(object).where(table["study"].notna(), "—"),
        }
    )
    differences = pd.DataFrame(
        {
            "pair": pairs["a"] + " - " + pairs["b"],
            "mean difference (points)": (100 * pairs["mean_a_minus_b"]).round(2),
            "Welch p": pairs["p_value"].map(lambda p: f"{p:.2g}"),
            f"larger than seed noise (p < {ALPHA})": pairs["larger_than_seed_noise"].map({True: "yes", False: "no"}),
        }
    )
    return f"{shown.to_markdown(index=False)}\n\n{differences.to_markdown(index=False)}\n"
