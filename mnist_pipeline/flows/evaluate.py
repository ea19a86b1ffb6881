"""`evaluate`: a model, through pyfunc as a consumer loads it, on the MNIST test set.

One run named "evaluate": the model URI and data as params, test_accuracy and test_loss,
and the same per-class table, confusion counts and plots a training run logs. Prints the
two scores.
"""

import sys

from mnist_pipeline import names
from mnist_pipeline.core import evaluation
from mnist_pipeline.core.commands import EvaluateParams
from mnist_pipeline.core.data import load_for
from mnist_pipeline.tracking import access, logged_model, reports, run_lifecycle, store


def run(params: EvaluateParams) -> dict[str, float]:
    """Returns the scores."""
    data = load_for(params.data_dir)
    store.check_tracking_store()

    uri = params.model_uri
    access.require_model_read(uri, "evaluate")
    unlogged = access.runs_refusal("evaluate")  # a consumer (READ only) evaluates without a run
    model = logged_model.load_pyfunc(uri)  # before the run: a bad URI creates no run
    probabilities = logged_model.predict_probabilities(model, data.x_test)
    scores = evaluation.scores(data.y_test, probabilities)
    if unlogged:
        print(f"note: {unlogged}; the scores are printed, not logged", file=sys.stderr)
    else:
        with run_lifecycle.ended_run(
            run_name="evaluate", tags={names.TAG_ROLE: names.ROLE_EVALUATE, names.TAG_MODEL_URI: uri}
        ):
            run_lifecycle.log_missing_params({"model_uri": uri, "data_source": data.source, "data_digest": data.digest})
            if getattr(model.metadata, "model_id", None):
                run_lifecycle.set_tags({names.TAG_MODEL_ID: model.metadata.model_id})
            run_lifecycle.log_metrics(scores)
            reports.log_test_report(data, probabilities, uri)
    print(f"{uri}: test accuracy {scores['test_accuracy']:.4f}, loss {scores['test_loss']:.4f}")
    return scores
