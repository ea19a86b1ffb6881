"""Taking a ``models:/`` URI apart, the one place that does, as MLflow reads it
(``mlflow.store.artifact.utils.models._parse_model_uri``): ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``models:/NAME/latest`` and ``models:/NAME/<stage>`` name a
registered model; ``models:/<model_id>`` names a logged model."""


def parse(uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of the registered model ``uri`` names (alias and version None:
    its latest version, or a stage's); None for a URI that names none: a logged model
    (``models:/m-<id>``), ``runs:/...``, a path, or a ``models:/`` URI MLflow refuses."""
    rest = uri.removeprefix("models:/")
    if rest == uri:
        return None
    if "/" in rest:
        name, _, suffix = rest.partition("/")
        if not name or not suffix or "/" in suffix:
            return None
        return name, None, suffix if suffix.isdigit() else None
    name, _, alias = rest.rpartition("@")
    return (name, alias, None) if name and alias else None
