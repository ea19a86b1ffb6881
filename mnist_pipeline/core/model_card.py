"""The model card of a registered version: markdown built from plain values, no MLflow.

``registry.register_run`` fills it from what the training run logged (params, metrics,
tags and the test-set confusion counts) and logs it on that run.
"""

from collections.abc import Mapping
from dataclasses import fields

import numpy as np

from mnist_pipeline.core.config import MAX_REQUEST_MB, TrainConfig

CONFUSED_PAIRS = 3  # (true, predicted) pairs listed under known weaknesses
# Params shown as hyperparameters, in this order (data_* params go under "Data").
HYPERPARAMETERS = (*(f.name for f in fields(TrainConfig)), "optimizer", "loss", "num_parameters")
METRICS = {  # metric -> what it is, in the card's metrics table
    "val_accuracy": "validation, last epoch: the score that chose this version",
    "val_loss": "validation, last epoch",
    "best_val_accuracy": "validation, best epoch",
    "best_epoch": "epoch of best_val_accuracy (the model holds the last epoch's weights)",
    "test_accuracy": "test set: reported, never used to choose",
    "test_loss": "test set",
    "train_seconds": "wall time of training",
}


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Share of each true digit's test images predicted right (rows: true digit)."""
    return np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)


def confused_pairs(confusion: np.ndarray, top: int = CONFUSED_PAIRS) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent mistakes as (true, predicted, count), most frequent first;
    ties in (true, predicted) order. Cells with no mistake are left out."""
    mistakes = confusion.copy()
    np.fill_diagonal(mistakes, 0)
    cells = zip(*np.unravel_index(np.argsort(-mistakes, axis=None, kind="stable")[:top], mistakes.shape))
    return [(int(t), int(p), int(mistakes[t, p])) for t, p in cells if mistakes[t, p] > 0]


def build(
    model_name: str,
    version: str,
    chosen: str,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    confusion: np.ndarray | None,
    run_id: str,
    model_uri: str,
) -> str:
    """The card as markdown. ``chosen``: how the version was chosen (its description);
    ``confusion``: (10, 10) test-set counts, rows true digit, or None if the run logged none."""
    knobs = [(k, f"`{params[k]}`" if params[k] else "none") for k in HYPERPARAMETERS if k in params]
    scores = [(k, f"{metrics[k]:.4g}", what) for k, what in METRICS.items() if k in metrics]
    sections = [
        f"# Model card: {model_name} version {version}",
        chosen,
        _data(params, confusion),
        _table("Variant and hyperparameters", ("parameter", "value"), knobs),
        _table("Metrics", ("metric", "value", "what"), scores),
        _per_class(confusion),
        _weaknesses(confusion),
        _how_to_load(model_name, version),
        f"## Lineage\n\nTraining run `{run_id}` (its plots and tables back this card), "
        + f"logged model `{model_uri}`.",
    ]
    return "\n\n".join(sections) + "\n"


def _table(title: str, header: tuple[str, ...], rows) -> str:
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def _data(params: Mapping[str, str], confusion: np.ndarray | None) -> str:
    held_out = f"{float(params['validation_split']):.0%}" if "validation_split" in params else "(not logged)"
    tested = f"{int(confusion.sum()):,} " if confusion is not None else ""
    return (
        "## Data\n\n"
        f"- source: `{params.get('data_source', 'not logged')}`\n"
        f"- digest of the four arrays' content: `{params.get('data_digest', 'not logged')}`\n"
        f"- validation: the last {held_out} of the training images; test: the {tested}MNIST test images"
    )


def _per_class(confusion: np.ndarray | None) -> str:
    if confusion is None:
        return "## Per-class accuracy (test set)\n\nNot known: the training run logged no confusion counts."
    accuracy = per_class_accuracy(confusion)
    rows = [(d, int(confusion[d].sum()), int(confusion[d, d]), f"{accuracy[d]:.4f}") for d in range(len(confusion))]
    return _table("Per-class accuracy (test set)", ("digit", "test images", "correct", "accuracy"), rows)


def _weaknesses(confusion: np.ndarray | None) -> str:
    lines = ["## Known weaknesses", ""]
    if confusion is not None:
        lines.append("Most confused digits on the test set (true digit read as another):")
        for true, predicted, count in confused_pairs(confusion):
            share = count / max(int(confusion[true].sum()), 1)
            lines.append(f"- {true} read as {predicted}: {count} images ({share:.2%} of the {true}s)")
        accuracy = per_class_accuracy(confusion)
        lines.append(f"- weakest digit: {accuracy.argmin()} ({accuracy.min():.2%} right)")
    lines.append(
        "- trained and tested on MNIST only: centred, size-normalised white digits on black, "
        "28x28. Other pictures must be converted the same way (`mnist-pipeline predict` does it)."
    )
    return "\n".join(lines)


def _how_to_load(model_name: str, version: str) -> str:
    this = f"models:/{model_name}/{version}"
    return f"""## How to load

```python
import mlflow
model = mlflow.pyfunc.load_model("{this}")  # this version
model = mlflow.pyfunc.load_model("models:/{model_name}@champion")  # the champion, whichever version it is now
keras_model = mlflow.keras.load_model("{this}")  # the Keras model itself
probabilities = model.predict(images.astype("float32"))  # raw pixels 0-255, (n, 28, 28) -> (n, 10)
```

Serve it over REST (a request carries raw pixels under `inputs`; bodies over {MAX_REQUEST_MB} MiB get 413):

```bash
mnist-pipeline serve --model-uri {this} --port 5000
```"""
