"""tracking/model_uris.py: the one parser of models:/ URIs, over every form a user can pass."""

import pytest

from mnist_pipeline.tracking import access, model_uris, registry, serving_model

TABLE = [
    ("models:/mnist-digits@champion", ("mnist-digits", "champion", None)),
    ("models:/mnist-digits/12", ("mnist-digits", None, "12")),
    ("models:/mnist-digits/latest", ("mnist-digits", None, None)),
    ("models:/mnist-digits/Production", ("mnist-digits", None, None)),  # a stage
    ("models:/m-0123456789abcdef0123456789abcdef", None),  # a logged model's id
    ("models:/anything-without-a-suffix", None),  # MLflow reads it as a logged model's id too
    ("runs:/0123456789abcdef/model", None),
    ("/tmp/mlruns/1/models/model", None),
    ("file:///tmp/model", None),
    ("mnist-digits@champion", None),  # no scheme
    ("models:/", None),
    ("models:/mnist-digits@", None),
    ("models:/@champion", None),
    ("models:/mnist-digits/", None),
    ("models:/mnist-digits/1/2", None),
    ("models://mnist-digits/1", None),
]


@pytest.mark.parametrize("uri, named", TABLE)
def test_a_models_uri_is_taken_apart_as_mlflow_reads_it(uri, named):
    assert model_uris.parse(uri) == named


@pytest.mark.parametrize("uri, named", TABLE)
def test_serving_follows_only_an_alias_or_a_version(uri, named):
    target = serving_model.target_of(uri)
    if named and (named[1] or named[2]):
        assert target == serving_model.Target(*named)
    else:
        assert target == serving_model.Target()


@pytest.mark.parametrize("uri, asked", [(uri, named[0] if named else None) for uri, named in TABLE])
def test_loading_asks_to_read_the_registered_model_the_uri_names_and_no_other(uri, asked, monkeypatch):
    required = []
    monkeypatch.setattr(access, "require", lambda command, action, kind, resource, needed: required.append(resource))
    access.require_model_read(uri, "serve")
    assert required == ([asked] if asked else [])


@pytest.mark.parametrize("uri", [uri for uri, named in TABLE if not (named and (named[1] or named[2]))])
def test_verify_takes_only_a_uri_naming_an_alias_or_a_version(uri, tracking_store):
    with pytest.raises(registry.RegistryError, match="is not allowed: a registered version, models:/<name>@<alias>"):
        registry.version_of(uri)
