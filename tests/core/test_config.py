import pytest

from mnist_pipeline.core import config
from mnist_pipeline.core.config import ConfigError, parse_overrides, parse_variants, resolve
from mnist_pipeline.core.variants import VARIANTS


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_alone_gives_its_study_values(name):
    cfg = resolve(name)
    variant = VARIANTS[name]
    assert (cfg.hidden_units, cfg.conv_filters, cfg.dropout, cfg.l2, cfg.epochs) == (
        variant.hidden_units,
        variant.conv_filters,
        variant.dropout,
        variant.l2,
        variant.epochs,
    )
    assert (cfg.batch_size, cfg.learning_rate, cfg.validation_split, cfg.seed) == (
        config.BATCH_SIZE,
        config.LEARNING_RATE,
        config.VALIDATION_SPLIT,
        config.SEED,
    )


def test_study_table():
    assert VARIANTS["baseline"].hidden_units == (128,)
    assert VARIANTS["baseline"].dropout == 0.5
    assert VARIANTS["regularized"].hidden_units == VARIANTS["final"].hidden_units == (512, 256, 128)
    assert VARIANTS["regularized"].l2 > 0 and VARIANTS["final"].l2 == 0
    assert (VARIANTS["regularized"].epochs, VARIANTS["final"].epochs) == (10, 13)
    assert all(VARIANTS[name].conv_filters == () for name in ("baseline", "regularized", "final"))
    assert not any(VARIANTS[name].cosine_decay for name in ("baseline", "regularized", "final"))  # a constant rate


def test_main_trains_the_study_by_default_and_convnet_on_request():
    from mnist_pipeline.core.variants import DEFAULT_VARIANTS

    assert DEFAULT_VARIANTS == ("baseline", "regularized", "final")
    assert VARIANTS["convnet"].conv_filters and parse_variants("final,convnet") == ("final", "convnet")
    cfg = resolve("final", parse_overrides({"conv_filters": "16"}))  # any variant can take conv blocks
    assert cfg.conv_filters == (16,) and cfg.as_params()["conv_filters"] == "16"
    assert resolve("final").as_params()["conv_filters"] == ""


def test_overrides_replace_only_what_is_given():
    raw = {name: "" for name in config.OVERRIDABLE} | {"epochs": "3", "hidden_units": "64, 32"}
    cfg = resolve("regularized", parse_overrides(raw))
    assert cfg.epochs == 3 and cfg.hidden_units == (64, 32)
    assert cfg.l2 == VARIANTS["regularized"].l2


def test_zero_is_a_real_override_not_a_default():
    cfg = resolve("final", parse_overrides({"dropout": "0", "l2": "0.0"}))
    assert cfg.dropout == 0.0 and cfg.l2 == 0.0


def test_params_are_flat_and_identical_in_keys_across_variants():
    keys = {tuple(sorted(resolve(name).as_params())) for name in VARIANTS}
    assert len(keys) == 1
    assert resolve("final").as_params()["hidden_units"] == "512,256,128"


@pytest.mark.parametrize(
    ("name", "text", "allowed"),
    [
        ("epochs", "0", ">= 1"),
        ("epochs", "-3", ">= 1"),
        ("epochs", "2.5", "integer"),
        ("epochs", "ten", "integer"),
        ("dropout", "1", "[0, 1)"),
        ("dropout", "-0.1", "[0, 1)"),
        ("dropout", "nan", "[0, 1)"),
        ("validation_split", "0", "(0, 1)"),
        ("validation_split", "1.0", "(0, 1)"),
        ("hidden_units", "512,,128", "positive integers"),
        ("hidden_units", "512,-1", "positive integers"),
        ("hidden_units", "a,b", "positive integers"),
        ("conv_filters", "32,0", "at most 3 positive integers"),
        ("conv_filters", "32;64", "at most 3 positive integers"),
        ("conv_filters", "8,16,32,64", "at most 3 positive integers"),
        ("l2", "-0.5", ">= 0"),
        ("learning_rate", "0", "> 0"),
        ("batch_size", "0", ">= 1"),
        ("seed", "-1", "[0, 2**32)"),
        ("seed", "4294967296", "[0, 2**32)"),
    ],
)
def test_bad_values_name_parameter_value_and_what_is_allowed(name, text, allowed):
    with pytest.raises(ConfigError) as err:
        resolve("final", parse_overrides({name: text}))
    message = str(err.value)
    assert message.startswith(f"{name}=") and text.split(",")[-1] in message
    assert allowed in message and "\n" not in message


@pytest.mark.parametrize("shift", [-0.1, 0.5, float("nan")])
def test_augment_shift_is_checked_though_only_a_variant_sets_it(shift):
    import dataclasses

    with pytest.raises(ConfigError, match=rf"augment_shift={shift} is not allowed: must be a number in \[0, 0.5\)"):
        dataclasses.replace(resolve("convnet"), augment_shift=shift)


def test_unknown_variant():
    with pytest.raises(ConfigError, match=r"variant='big' is not allowed: must be one of baseline"):
        resolve("big")


def test_variant_lists():
    assert parse_variants("final, baseline") == ("final", "baseline")
    for bad in ("", "final,huge", "final,final"):
        with pytest.raises(ConfigError, match="variants="):
            parse_variants(bad)
