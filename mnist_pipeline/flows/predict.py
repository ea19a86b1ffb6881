"""`predict`: digits in picture files (PNG, JPEG, ...) or IDX images files, one line each.

Pictures become MNIST-style 28x28 digits first (core/pictures.py). Logs nothing.
"""

from mnist_pipeline.core.commands import PredictParams
from mnist_pipeline.core.pictures import load_inputs
from mnist_pipeline.tracking import access, logged_model, store


def run(params: PredictParams) -> None:
    names, images = load_inputs(params.files)
    store.check_tracking_store()
    access.require_model_read(params.model_uri, "predict")

    model = logged_model.load_pyfunc(params.model_uri)
    for name, p in zip(names, logged_model.predict_probabilities(model, images)):
        print(f"{name}: {p.argmax()} (p={p.max():.3f})")
