"""The alias follower's decisions, on fakes: swap to where the alias points, refuse a bad
version once (until the alias moves), keep serving through a store outage and a deleted
alias with one log line per event, and never hold more than two models."""

from __future__ import annotations

import gc
import logging
import threading
import types
import weakref

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from mnist_pipeline.tracking import follower, serving_model

URI = "models:/digits@champion"


class FakeModel:
    """Stands in for a loaded pyfunc model; ``alive`` counts the ones not yet freed."""

    alive = weakref.WeakSet()

    def __init__(self, version: str):
        self.version = version
        FakeModel.alive.add(self)


def fake_served(version: str) -> serving_model.Served:
    return serving_model.Served(FakeModel(version), version, "run")


class Registry:
    """A fake MlflowClient: the alias points at ``version``; ``error`` is raised instead if set."""

    def __init__(self, version: str):
        self.version, self.error = version, None

    def get_model_version_by_alias(self, name, alias):
        if self.error is not None:
            raise self.error
        return type("ModelVersion", (), {"version": int(self.version)})()


@pytest.fixture
def loads(monkeypatch):
    """serving_model.load replaced: records each version asked for and the models alive at that
    moment; versions in ``bad`` are refused, those in ``missing`` cannot be downloaded."""
    record = {"asked": [], "alive_at_load": [], "bad": set(), "missing": set()}

    def load(source, version, current=None):
        gc.collect()
        record["asked"].append(version)
        record["alive_at_load"].append(len(FakeModel.alive))
        if version in record["bad"]:
            raise serving_model.Refused("does not load: truncated file")
        if version in record["missing"]:
            raise OSError(f"no artifacts for version {version}")
        return fake_served(version)

    monkeypatch.setattr(serving_model, "load", load)
    return record


@pytest.fixture
def events(caplog):
    caplog.set_level(logging.INFO, logger=follower.LOG.name)
    return lambda: [r.getMessage() for r in caplog.records if r.name == follower.LOG.name]


def make(version="1", refresh=30.0):
    registry = Registry(version)
    return registry, follower.Follower(URI, fake_served(version), refresh, client=registry)


def test_follows_the_alias_and_releases_the_old_model(loads, events):
    registry, holder = make("1")
    old = weakref.ref(holder.current.model)
    holder.poll()
    assert loads["asked"] == [] and holder.current.version == "1"  # the alias has not moved
    registry.version = "2"
    holder.poll()
    assert holder.current.version == "2" and holder.refused is None
    assert old() is None, "the swapped-out model is still held"
    assert loads["asked"] == ["2"]
    state = holder.state()
    assert state["version"] == "2" and state["alias"] == "champion" and state["following"]
    assert sum("serving version 2 of digits (was version 1)" in line for line in events()) == 1


def test_a_request_in_flight_keeps_its_model_and_at_most_two_are_held(loads, monkeypatch):
    monkeypatch.setattr(follower, "RELEASE_SECONDS", 60)  # the bound on a wait that must end sooner
    gc.collect()  # no version of an earlier test left: the follower counts every version the process holds
    checks = threading.Semaphore(0)  # released once per look of the follower at the swapped-out model
    monkeypatch.setattr(follower, "gc", types.SimpleNamespace(collect=checks.release))
    registry, holder = make("1")
    in_flight = holder.current  # a request that started on version 1
    registry.version = "2"
    swap = threading.Thread(target=holder.poll)
    swap.start()
    for _ in range(3):  # the follower found version 1 still held three times, and waits on
        assert checks.acquire(timeout=30), "the follower did not wait for version 1's last request"
    assert holder.current.version == "2" and in_flight.version == "1" and swap.is_alive()
    del in_flight  # the request finishes
    swap.join(timeout=30)
    assert not swap.is_alive()
    registry.version = "3"
    holder.poll()
    assert holder.current.version == "3" and loads["asked"] == ["2", "3"]
    assert max(loads["alive_at_load"]) <= 1, "more than one model held besides the one loading"


def test_a_bad_version_is_refused_once_until_the_alias_moves(loads, events):
    registry, holder = make("1")
    loads["bad"].add("3")
    registry.version = "3"
    for _ in range(3):
        holder.poll()
    assert holder.current.version == "1"
    assert loads["asked"] == ["3"], "a refused version was tried again without the alias moving"
    assert holder.refused["version"] == "3" and "does not load" in holder.refused["reason"] and holder.refused["at"]
    assert sum("refused version 3 of digits" in line for line in events()) == 1
    registry.version = "1"  # back to the version that serves: nothing to load, nothing refused
    holder.poll()
    assert holder.refused is None and loads["asked"] == ["3"]
    registry.version = "3"  # the alias moved again: the version is tried again
    holder.poll()
    assert loads["asked"] == ["3", "3"] and holder.current.version == "1"


def test_a_version_whose_artifacts_are_missing_is_refused(loads):
    registry, holder = make("1")
    loads["missing"].add("4")
    registry.version = "4"
    holder.poll()
    holder.poll()
    assert holder.current.version == "1" and loads["asked"] == ["4"]
    assert "cannot be downloaded" in holder.refused["reason"]


def test_a_store_outage_is_logged_once_going_and_once_back(loads, events):
    registry, holder = make("1")
    registry.error = MlflowException("API request failed: Connection refused", INTERNAL_ERROR)
    for _ in range(5):
        holder.poll()
    assert holder.current.version == "1" and holder.state()["store_problem"]
    registry.error, registry.version = None, "2"
    holder.poll()
    holder.poll()
    lines = events()
    assert sum("cannot be read" in line for line in lines) == 1
    assert sum("can be read again" in line for line in lines) == 1
    assert holder.current.version == "2" and holder.state()["store_problem"] is None


def test_a_store_that_goes_during_a_download_is_tried_again_not_refused(loads, monkeypatch):
    registry, holder = make("1")
    registry.version = "2"

    def load_while_the_store_goes(*args, **kwargs):
        registry.error = ConnectionError("connection reset")
        raise OSError("download interrupted")

    monkeypatch.setattr(serving_model, "load", load_while_the_store_goes)
    holder.poll()
    assert holder.refused is None and holder.current.version == "1"
    monkeypatch.undo()
    monkeypatch.setattr(serving_model, "load", lambda source, version, current=None: fake_served(version))
    registry.error = None
    holder.poll()
    assert holder.current.version == "2"


def test_a_deleted_alias_leaves_the_version_serving_and_says_so(loads, events):
    registry, holder = make("1")
    registry.error = MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE)
    for _ in range(3):
        holder.poll()
    assert holder.current.version == "1" and holder.state()["alias_version"] is None
    assert sum("was deleted" in line and "still serving version 1" in line for line in events()) == 1
    registry.error = None  # set again, on the version that serves
    holder.poll()
    assert holder.state()["alias_version"] == "1" and loads["asked"] == []
    assert sum("is back at version 1" in line for line in events()) == 1


def test_a_uri_without_an_alias_or_a_zero_refresh_is_not_followed():
    registry = Registry("3")
    assert not follower.Follower("models:/digits/3", fake_served("3"), 30, registry).following
    assert not follower.Follower("runs:/abc/model", fake_served(None), 30, registry).following
    assert not follower.Follower(URI, fake_served("3"), 0, registry).following
    assert serving_model.target_of(URI) == serving_model.Target("digits", "champion")
    assert serving_model.target_of("models:/digits/12") == serving_model.Target("digits", version="12")
    assert serving_model.target_of("runs:/abc/model") == serving_model.Target()
    assert serving_model.target_of("models:/m-0123456789abcdef") == serving_model.Target()


def test_a_store_error_that_quotes_a_password_is_logged_masked(loads, events):
    registry, holder = make("1")
    registry.error = MlflowException("request to http://ann:s3cret-word-12@store:5000 failed", INTERNAL_ERROR)
    holder.poll()
    lines = [line for line in events() if "cannot be read" in line]
    assert len(lines) == 1 and "ann:***@store" in lines[0]
    assert "s3cret-word-12" not in " ".join(events()) + str(holder.state())


def test_a_download_the_store_fails_is_tried_again_not_refused(loads, monkeypatch, events):
    registry, holder = make("1")
    registry.version = "2"
    failures = [MlflowException("API request failed: Max retries exceeded", INTERNAL_ERROR)] * 2

    def flaky(source, version, current=None):
        if failures:
            raise failures.pop()
        return fake_served(version)

    monkeypatch.setattr(serving_model, "load", flaky)
    holder.poll()
    holder.poll()
    assert holder.refused is None and holder.current.version == "1"
    holder.poll()
    assert holder.current.version == "2"
    assert sum("could not be downloaded" in line for line in events()) == 1
