"""Live evidence on synthetic traffic: windows add up, percentiles from buckets, agreement, labels, psi."""

import numpy as np
import pandas as pd
import pytest

from mnist_pipeline.core.live import LATENCY_EDGES, Window, psi, quantile

COUNTS = ("requests", "images", "shadowed_requests", "shadowed_images", "dropped_requests", "challenger_errors")
COUNTS += ("labelled_images", "paired_images", "only_champion_right", "only_challenger_right")


def traffic(seed: int, requests: int = 40):
    """Requests of 1-8 images: champion and challenger probabilities, seconds each, labels,
    and what happens to the shadow ("ok", "drop", "nan", "raise")."""
    rng = np.random.default_rng(seed)
    for _ in range(requests):
        n = int(rng.integers(1, 9))
        champion = rng.dirichlet(np.ones(10) * 0.3, size=n)
        challenger = np.where(rng.random((n, 1)) < 0.8, champion, rng.dirichlet(np.ones(10), size=n))
        fate = rng.choice(["ok", "ok", "ok", "drop", "nan", "raise"])
        yield champion, challenger, rng.lognormal(-5, 1, 2), rng.integers(0, 10, n), fate


def feed(window: Window, requests) -> Window:
    for champion, challenger, seconds, labels, fate in requests:
        classes = window.answer(champion, seconds[0])
        theirs = None
        if fate == "drop":
            window.drop()
        else:
            answer = {"ok": challenger, "nan": challenger * np.nan, "raise": None}[fate]
            theirs = window.shadow(classes, answer, seconds[1])
        window.label(labels, classes, theirs)
    return window


def test_two_windows_add_up_to_one_fed_both():
    first, second = list(traffic(1)), list(traffic(2))
    summed, whole = feed(Window(), first) + feed(Window(), second), feed(Window(), first + second)
    for name, table in whole.tables().items():
        pd.testing.assert_frame_equal(summed.tables()[name], table, obj=name)
    reference = np.arange(1, 11)
    assert summed.figures(reference) == pytest.approx(whole.figures(reference))
    assert len(whole.figures(reference)) == 22  # every figure defined: the traffic has shadows, labels and errors
    apart = feed(Window(), first).figures(), feed(Window(), second).figures()
    assert {k: apart[0][k] + apart[1][k] for k in COUNTS} == {k: whole.figures()[k] for k in COUNTS}


def test_the_tables_read_back_into_the_same_window():
    window = feed(Window(), traffic(3))
    again = Window.from_tables(window.tables())
    assert again.figures(np.arange(1, 11)) == window.figures(np.arange(1, 11))
    for name, table in window.tables().items():
        pd.testing.assert_frame_equal(again.tables()[name], table, obj=name)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("q", [0.5, 0.99])
def test_percentiles_from_the_buckets_fall_in_the_bucket_of_the_exact_one(sigma, q):
    seconds = np.random.default_rng(4).lognormal(np.log(0.01), sigma, 997)
    window = Window()
    for s in seconds:
        window.answer(np.eye(10)[:1], s)
    estimate, exact = quantile(window.champion.latency, q), np.percentile(seconds, 100 * q, method="inverted_cdf")
    assert np.searchsorted(LATENCY_EDGES, estimate, side="right") == np.searchsorted(LATENCY_EDGES, exact, side="right")
    assert 10**-0.1 < estimate / exact < 10**0.1
    assert window.figures()[f"champion_p{round(100 * q)}_ms"] == pytest.approx(1000 * estimate)


def test_agreement_from_the_table_is_the_share_of_images_both_classed_alike():
    window, same, shadowed = Window(), 0, 0
    for champion, challenger, seconds, _, fate in traffic(5):
        classes = window.answer(champion, seconds[0])
        if fate == "ok":  # the others: not shadowed, or errors that the table must not count
            window.shadow(classes, challenger, seconds[1])
            same, shadowed = same + (classes == challenger.argmax(axis=1)).sum(), shadowed + len(classes)
        elif fate != "drop":
            assert window.shadow(classes, {"nan": challenger * np.nan, "raise": None}[fate], seconds[1]) is None
    figures = window.figures()
    assert figures["agreement"] == same / shadowed and figures["shadowed_images"] == shadowed
    assert 0 < figures["agreement"] < 1 and figures["challenger_errors"] > 0
    # rows: the champion's class, columns: the challenger's
    assert (window.tables()["agreement"].sum(axis=0).to_numpy() == window.challenger.predicted).all()


def test_a_wrong_shape_is_an_error_of_the_challenger():
    window = Window()
    classes = window.answer(np.eye(10)[:3], 0.001)
    assert window.shadow(classes, np.eye(10)[:2], 0.001) is None
    assert window.shadow(classes, np.eye(10)[:3, :9], 0.001) is None
    assert window.figures()["challenger_errors"] == 2 and "agreement" not in window.figures()


def test_labels_not_shadowed_count_for_the_champion_only():
    window = Window()
    right, wrong = np.eye(10)[[1, 2]], np.eye(10)[[3, 3]]
    window.label(np.array([1, 2]), window.answer(right, 0.001), None)  # not shadowed: the champion right twice
    classes = window.answer(right, 0.001)
    window.label(np.array([1, 5]), classes, window.shadow(classes, wrong, 0.002))  # one champion right, none
    figures = window.figures()
    assert figures["champion_live_accuracy"] == 3 / 4 and figures["labelled_fraction"] == 1.0
    assert (figures["paired_images"], figures["only_champion_right"], figures["only_challenger_right"]) == (2, 1, 0)
    assert figures["champion_paired_accuracy"] == 1 / 2 and figures["challenger_live_accuracy"] == 0


def test_psi_is_zero_on_equal_shares_and_grows_with_the_shift():
    reference = np.array([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert psi(3 * reference, reference) == pytest.approx(0, abs=1e-12)
    more_threes = reference + 100 * np.eye(10, dtype=int)[3], reference + 1000 * np.eye(10, dtype=int)[3]
    assert 0 < psi(more_threes[0], reference) < psi(more_threes[1], reference)
    # two classes: shares 1/2, 1/2 against 1/4, 3/4 (the others empty on both sides add nothing)
    assert psi([1, 1] + [0] * 8, [1, 3] + [0] * 8) == pytest.approx(0.25 * np.log(2) + 0.25 * np.log(1.5))
    assert np.isfinite(psi([1] + [0] * 9, reference))  # empty classes: the floor
    assert Window().figures(reference) == {k: 0.0 for k in COUNTS}  # no image: no psi
