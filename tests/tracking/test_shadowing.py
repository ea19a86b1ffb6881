"""The shadow on its own: answers counted, the challenger scored off the request's path, its
failures counted and nothing else, drops when the queue is full, feedback, windows."""

import threading
import time
import types

import numpy as np
import pytest

from helpers.checks import wait_until
from mnist_pipeline.tracking import shadowing

CHAMPION = types.SimpleNamespace(version="1")


def one_hot(classes) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[np.asarray(classes)]


def version(predict, number="2"):
    return types.SimpleNamespace(version=number, model=types.SimpleNamespace(predict=predict))


@pytest.fixture
def shadows():
    made = []

    def make(challenger, fraction=1.0, timeout=5.0, window_seconds=3600.0, on_window=None):
        made.append(shadowing.Shadow(lambda: challenger, fraction, timeout, window_seconds, on_window))
        return made[-1]

    yield make
    for shadow in made:
        shadow.stop()


def answer(shadow, request_id, classes, champion=CHAMPION):
    images = np.zeros((len(classes), 28, 28), np.float32)
    shadow.answered(request_id, images, one_hot(classes), 0.001, champion)


def test_the_champion_never_waits_for_a_challenger_that_is_stuck(shadows):
    release = threading.Event()
    shadow = shadows(version(lambda images: release.wait(30) and one_hot([3] * len(images))))
    answer(shadow, "a", [3, 4])  # returns while the challenger holds its call
    assert shadow.state()["total"]["requests"] == 1 and not release.is_set()
    release.set()
    wait_until(lambda: shadow.state()["total"].get("shadowed_images") == 2)
    figures = shadow.state()["total"]
    assert figures["agreement"] == 0.5 and figures["challenger_errors"] == 0


def test_the_challenger_is_called_only_while_no_champion_request_is_under_way(shadows, monkeypatch):
    monkeypatch.setattr(shadowing, "SHADOW_LINGER", 0.0)  # a call as soon as the request is taken
    called = threading.Event()
    shadow = shadows(version(lambda images: called.set() or one_hot([3] * len(images))))
    with shadow.champion_working():
        answer(shadow, "a", [3])
        wait_until(lambda: shadow.state()["queued"] == 0)  # taken by the shadow thread
        assert not called.wait(0.5)  # without the wait for an idle moment: called within milliseconds
    wait_until(called.is_set)
    wait_until(lambda: shadow.state()["total"].get("shadowed_images") == 1)


@pytest.mark.parametrize(
    "predict",
    [
        lambda images: 1 / 0,  # raises
        lambda images: np.full((len(images), 10), np.nan, np.float32),  # not finite
        lambda images: one_hot([0]),  # one row for two images
        lambda images: time.sleep(2) or one_hot([0] * len(images)),  # past the timeout
    ],
    ids=["raises", "nan", "wrong shape", "too late"],
)
def test_a_failing_challenger_is_an_error_and_nothing_else(shadows, predict):
    shadow = shadows(version(predict), timeout=0.2)
    answer(shadow, "a", [1, 2])
    wait_until(lambda: shadow.state()["total"]["challenger_errors"] == 1)
    figures = shadow.state()["total"]
    assert figures["requests"] == 1 and figures["images"] == 2 and figures["shadowed_images"] == 0


def test_a_full_queue_drops_requests_from_the_shadow_and_counts_them(shadows, monkeypatch):
    monkeypatch.setattr(shadowing, "QUEUE_REQUESTS", 3)
    called, release = threading.Event(), threading.Event()
    shadow = shadows(version(lambda images: called.set() or release.wait(30) and one_hot([0] * len(images))))
    answer(shadow, "first", [0])
    wait_until(called.is_set)  # the first is in the challenger's hands
    for n in range(5):
        answer(shadow, f"r{n}", [0])
    assert shadow.state()["total"]["dropped_requests"] == 2  # 3 wait in the queue
    release.set()
    wait_until(lambda: shadow.state()["total"].get("shadowed_requests") == 4)


def test_now_and_then_a_request_is_scored_alone_and_its_time_is_the_challenger_s_latency(shadows, monkeypatch):
    monkeypatch.setattr(shadowing, "TIMED_EVERY", 3600.0)  # the first request alone, then batches only
    calls = []
    shadow = shadows(version(lambda images: calls.append(len(images)) or one_hot([0] * len(images))))
    for n in range(4):
        answer(shadow, f"r{n}", [0])
    wait_until(lambda: shadow.state()["total"].get("shadowed_requests") == 4)
    assert calls[0] == 1 and sum(calls) == 4
    with shadow._lock:
        timed = (shadow.total + shadow.window).challenger.latency.sum()
    assert timed == 1 and "challenger_p99_ms" in shadow.state()["total"]


def test_the_champion_s_own_version_is_not_shadowed(shadows):
    calls = []
    shadow = shadows(version(lambda images: calls.append(len(images)) or one_hot([0] * len(images)), number="1"))
    answer(shadow, "same", [5])  # the champion is version 1, the challenger's own
    answer(shadow, "other", [5, 5], champion=types.SimpleNamespace(version="0"))  # queued behind it, were it queued
    wait_until(lambda: shadow.state()["total"].get("shadowed_requests") == 1)
    assert calls == [2]


def test_a_zero_fraction_shadows_nothing(shadows):
    release = threading.Event()
    shadow = shadows(version(lambda images: release.wait(30) and one_hot([0] * len(images))), fraction=0.0)
    for request_id in "abc":
        answer(shadow, request_id, [5])
    state = shadow.state()  # one would be in the challenger's hands, two would wait
    release.set()
    assert state["queued"] == 0 and state["total"]["requests"] == 3 and state["total"]["shadowed_images"] == 0


def test_feedback_labels_a_kept_request_once_and_says_why_not_otherwise(shadows):
    shadow = shadows(version(lambda images: one_hot([7, 7])))
    answer(shadow, "a", [7, 1])
    wait_until(lambda: shadow.state()["total"].get("shadowed_images") == 2)
    assert shadow.feedback("a", [7, 2]) is None
    figures = shadow.state()["total"]
    assert figures["labelled_images"] == 2 and figures["champion_live_accuracy"] == 0.5
    assert figures["challenger_live_accuracy"] == 0.5 and figures["only_champion_right"] == 0
    cases = [
        ("a", [7, 2], 409),
        ("nobody", [1], 404),
        ("a", [7], 400),
        ("a", [7, 10], 400),
        ("a", ["7", 2], 400),
        ("a", [True, 2], 400),
        (None, [1, 2], 400),
        ("a", "72", 400),
    ]
    for request_id, labels, status in cases:
        assert shadow.feedback(request_id, labels)[0] == status, (request_id, labels)


def test_labels_sent_before_the_challenger_scored_the_request_are_paired_when_it_does(shadows):
    release = threading.Event()
    shadow = shadows(version(lambda images: release.wait(30) and one_hot([7, 2])))
    answer(shadow, "a", [7, 1])
    assert shadow.feedback("a", [7, 2]) is None  # the challenger still holds its call
    figures = shadow.state()["total"]
    assert figures["labelled_images"] == 2 and figures["paired_images"] == 0
    release.set()
    wait_until(lambda: shadow.state()["total"]["paired_images"] == 2)
    figures = shadow.state()["total"]
    assert figures["challenger_live_accuracy"] == 1.0 and figures["only_challenger_right"] == 1
    assert figures["labelled_images"] == 2 and figures["champion_live_accuracy"] == 0.5  # counted once


def test_windows_close_into_the_total_and_go_to_their_receiver(shadows):
    closed = []
    shadow = shadows(None, window_seconds=0.05, on_window=lambda number, window: closed.append((number, window)))
    answer(shadow, "a", [1])
    wait_until(lambda: closed and closed[-1][0] >= 2)
    assert [number for number, _ in closed[:2]] == [1, 2]
    assert sum(window.figures()["requests"] for _, window in closed) == 1
    assert shadow.state()["total"]["requests"] == 1


def test_only_the_last_kept_requests_take_feedback(shadows, monkeypatch):
    monkeypatch.setattr(shadowing, "KEPT_REQUESTS", 2)
    shadow = shadows(None)
    for request_id in "abc":
        answer(shadow, request_id, [0])
    assert shadow.feedback("a", [0])[0] == 404 and shadow.feedback("c", [0]) is None


def test_requests_waiting_for_the_challenger_go_together_in_one_call(shadows):
    release, calls = threading.Event(), []

    def predict(images):
        calls.append(len(images))
        release.wait(30)
        return one_hot(np.arange(len(images)) % 10)

    shadow = shadows(version(predict))
    answer(shadow, "first", [0])
    wait_until(lambda: calls == [1])  # the first is in the challenger's hands; three more wait
    for request_id, classes in (("a", [1, 2]), ("b", [3]), ("c", [4])):
        answer(shadow, request_id, classes)
    release.set()
    wait_until(lambda: shadow.state()["total"].get("shadowed_requests") == 4)
    assert calls == [1, 4]  # the three waiting: one call of their four images
    figures = shadow.state()["total"]
    assert figures["shadowed_images"] == 5 and figures["challenger_errors"] == 0
    assert figures["agreement"] == 1 / 5  # the first (0 and 0), then 1, 2, 3, 4 against 0, 1, 2, 3: split back in order
