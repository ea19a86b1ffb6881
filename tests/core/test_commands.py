"""The command dataclasses: strings read as MLproject passes them, checks at construction."""

import typing
from dataclasses import fields

import pytest

from mnist_pipeline.core.commands import COMMANDS, MainParams, Overrides, ReproduceParams, SweepParams, TrainParams
from mnist_pipeline.core.config import OVERRIDABLE, ConfigError, TrainConfig


def test_the_overrides_are_train_config_s_overridable_knobs_each_of_its_type_or_none():
    assert [f.name for f in fields(Overrides)] == list(OVERRIDABLE)
    assert {"augment_shift", "augment_rotation", "augment_zoom", "cosine_decay"}.isdisjoint(OVERRIDABLE)  # a variant's
    knobs, overrides = typing.get_type_hints(TrainConfig), typing.get_type_hints(Overrides)
    assert all(overrides[name] == knobs[name] | None for name in OVERRIDABLE)
    assert all(f.default is None for f in fields(Overrides))


def test_bool():
    assert MainParams.from_strings({"force": "True"}).force is True
    assert MainParams.from_strings({"force": "0"}).force is False
    with pytest.raises(ConfigError, match="force='maybe'"):
        MainParams.from_strings({"force": "maybe"})


def test_an_empty_override_is_the_variant_s_value_and_a_given_one_replaces_it():
    params = TrainParams.from_strings({"variant": "regularized", "epochs": "3", "l2": "", "dropout": " 0 "})
    [cfg] = params.configs()
    assert (cfg.epochs, cfg.dropout, cfg.l2) == (3, 0.0, 1e-3)
    assert MainParams.from_strings({"epochs": "2"}).configs()[1].variant == "regularized"


def test_construction_checks_typed_values_too():
    with pytest.raises(ConfigError, match="dropout=1.5 is not allowed"):
        TrainParams(dropout=1.5)
    with pytest.raises(ConfigError, match="seeds=1 is not allowed: must be an integer >= 2"):
        ReproduceParams(seeds=1)


def test_reproduce_runs_every_variant_at_every_seed():
    params = ReproduceParams.from_strings({"variants": "final,baseline", "seeds": "2", "seed": "7"})
    assert [(c.variant, c.seed) for c in params.configs()] == [
        ("final", 7),
        ("final", 8),
        ("baseline", 7),
        ("baseline", 8),
    ]


def test_sweep_defaults_no_seed_and_no_timeout():
    params = SweepParams.from_strings({"seed": "", "timeout": ""})
    assert (params.training_seed, params.timeout) == (42, None)
    assert SweepParams.from_strings({"seed": "3"}).training_seed == 3


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help_for_every_field_and_valid_defaults(command):
    params = COMMANDS[command]
    assert params.__doc__.strip() and all(f.metadata["help"] for f in fields(params))
    assert params.from_strings(params.defaults()) == params()
