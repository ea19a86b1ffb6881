import ast
import dataclasses
import inspect
import typing

import pytest

from mnist_pipeline.core import config
from mnist_pipeline.core.commands import TrainParams
from mnist_pipeline.core.config import EACH_VARIANT, KNOBS, OVERRIDABLE, ConfigError, parse_variants, resolve
from mnist_pipeline.core.variants import VARIANTS


def given(variant: str, **raw: str) -> config.TrainConfig:
    """``variant``'s configuration with knobs given as strings, as `train` reads MLproject's."""
    [cfg] = TrainParams.from_strings({"variant": variant, **raw}).configs()
    return cfg


@pytest.mark.parametrize("name", VARIANTS)
def test_a_variant_alone_gives_its_own_values_over_the_knobs_defaults(name):
    cfg, own = resolve(name), VARIANTS[name].knobs
    assert set(own) <= set(KNOBS), "a variant sets only knobs"
    for knob in KNOBS.values():
        expected = own[knob.name] if knob.default is EACH_VARIANT or knob.name in own else knob.default
        assert getattr(cfg, knob.name) == expected, knob.name
    assert (cfg.batch_size, cfg.learning_rate, cfg.validation_split, cfg.seed) == (128, 1e-3, 0.1, 42)


def test_study_table():
    baseline, regularized, final = (resolve(name) for name in ("baseline", "regularized", "final"))
    assert baseline.hidden_units == (128,) and baseline.dropout == 0.5
    assert regularized.hidden_units == final.hidden_units == (512, 256, 128)
    assert regularized.l2 > 0 and final.l2 == 0
    assert (regularized.epochs, final.epochs) == (10, 13)
    assert all(cfg.conv_filters == () and not cfg.cosine_decay for cfg in (baseline, regularized, final))


def test_train_config_fields_are_the_variant_and_the_knobs_and_runs_log_them_all():
    assert [f.name for f in dataclasses.fields(config.TrainConfig)] == ["variant", *KNOBS]
    assert list(resolve("convnet").as_params()) == ["variant", *KNOBS]


def test_each_field_is_written_in_train_config_s_class_body_with_its_type():
    """What a reader and a type checker see: an annotated line per field in the class body (a
    class made by make_dataclass has none), and the type checker reads ``cfg.epochs`` as an int."""
    classes = {
        node.name: node.body for node in ast.parse(inspect.getsource(config)).body if isinstance(node, ast.ClassDef)
    }
    assert "TrainConfig" in classes, "TrainConfig is not a class statement in core/config.py"
    body = classes["TrainConfig"]
    written = {line.target.id: ast.unparse(line.annotation) for line in body if isinstance(line, ast.AnnAssign)}
    hints = typing.get_type_hints(config.TrainConfig)
    assert list(written) == [f.name for f in dataclasses.fields(config.TrainConfig)]
    assert {name: eval(annotation, vars(config)) for name, annotation in written.items()} == hints
    assert (hints["epochs"], hints["dropout"], hints["hidden_units"]) == (int, float, tuple[int, ...])


@pytest.mark.parametrize("name", VARIANTS)
def test_a_logged_run_reads_back_as_the_config_it_logged(name):
    """What verify trains again: every knob's logged text parses to its value (MLflow logs
    str(value)), overrides of every overridable knob included."""
    cfg = dataclasses.replace(resolve(name), seed=7, batch_size=32, fused_rmsprop=False, learning_rate=5e-4)
    logged = {key: str(value) for key, value in cfg.as_params().items()}
    assert config.logged_config(logged) == cfg


def test_a_knob_a_run_did_not_log_is_what_runs_trained_with_before_it():
    logged = {key: str(value) for key, value in resolve("convnet").as_params().items()}
    unlogged = {name: knob.metadata["unlogged"] for name, knob in KNOBS.items() if "unlogged" in knob.metadata}
    # no shift, a constant rate, Keras' RMSprop ops: how runs trained before these knobs
    before = {"augment_shift": 0.0, "augment_rotation": 0.0, "augment_zoom": 0.0, "cosine_decay": False}
    assert unlogged.items() >= (before | {"fused_rmsprop": False}).items()
    for name in unlogged:
        del logged[name]
    assert config.logged_config(logged) == dataclasses.replace(resolve("convnet"), **unlogged)


def test_main_trains_the_study_by_default_and_convnet_on_request():
    from mnist_pipeline.core.variants import DEFAULT_VARIANTS

    assert DEFAULT_VARIANTS == ("baseline", "regularized", "final")
    assert resolve("convnet").conv_filters and parse_variants("final,convnet") == ("final", "convnet")
    cfg = given("final", conv_filters="16")  # any variant can take conv blocks
    assert cfg.conv_filters == (16,) and cfg.as_params()["conv_filters"] == "16"
    assert resolve("final").as_params()["conv_filters"] == ""


def test_overrides_replace_only_what_is_given():
    raw = {name: "" for name in OVERRIDABLE} | {"epochs": "3", "hidden_units": "64, 32"}
    cfg = given("regularized", **raw)
    assert cfg.epochs == 3 and cfg.hidden_units == (64, 32)
    assert cfg.l2 == resolve("regularized").l2


def test_zero_is_a_real_override_not_a_default():
    cfg = given("final", dropout="0", l2="0.0")
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
        given("final", **{name: text})
    message = str(err.value)
    assert message.startswith(f"{name}=") and text.split(",")[-1] in message
    assert allowed in message and "\n" not in message


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("augment_shift", -0.1, r"\[0, 0.5\)"),
        ("augment_shift", 0.5, r"\[0, 0.5\)"),
        ("augment_shift", float("nan"), r"\[0, 0.5\)"),
        ("augment_rotation", 46.0, r"\[0, 45\]"),
        ("augment_rotation", -1.0, r"\[0, 45\]"),
        ("augment_zoom", 0.5, r"\[0, 0.5\)"),
    ],
)
def test_the_augmentation_is_checked_though_only_a_variant_sets_it(name, value, allowed):
    with pytest.raises(ConfigError, match=rf"{name}={value} is not allowed: must be a number in {allowed}"):
        dataclasses.replace(resolve("convnet"), **{name: value})


def test_unknown_variant():
    with pytest.raises(ConfigError, match=r"variant='big' is not allowed: must be one of baseline"):
        resolve("big")


def test_variant_lists():
    assert parse_variants("final, baseline") == ("final", "baseline")
    for bad in ("", "final,huge", "final,final"):
        with pytest.raises(ConfigError, match="variants="):
            parse_variants(bad)
