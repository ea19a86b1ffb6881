"""Taking a ``models:/`` URI apart, the one place that does, as MLflow reads it
(``mlflow.store.artifact.utils.models._parse_model_uri``): ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``models:/NAME/latest`` and ``models:/NAME/<stage>`` name a
registered model; ``models:/<model_id>`` names a logged model."""

import re

# models:/NAME/SUFFIX (a version if all digits, else latest or a stage), or models:/NAME@ALIAS
# (NAME up to the last @); neither part empty or with a '/'
_NAMED = re.compile(r"models:/(?:([^/]+)/([^/]+)|([^/]+)@([^/@]+))")


def parse(uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of the registered model ``uri`` names (alias and version None:
    its latest version, or a stage's); None for a URI that names none: a logged model
    (``models:/m-<id>``), ``runs:/...``, a path, or a ``models:/`` URI MLflow refuses."""
    if not (named := _NAMED.fullmatch(uri)):
        return None
    name, suffix, aliased, alias = named.groups()
    return (aliased, alias, None) if alias else (name, None, suffix if suffix.isdigit() else None)
