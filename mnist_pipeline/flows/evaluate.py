"""`evaluate`: a model, through pyfunc as a consumer loads it, on the MNIST test set.

Prints test accuracy and loss, and logs nothing (a consumer who may only read can run it).
With ``log`` it records the evaluation in one run named "evaluate": the model URI and data as
params, test_accuracy and test_loss, the same per-class table, confusion counts and plots a
training run logs, and MLflow's classifier evaluation of the same predictions
(``mlflow.models.evaluate``: accuracy_score, precision, recall and F1, per_class_metrics,
confusion_matrix), linked to the model's logged model so that the UI shows it beside the model.
"""

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
    if params.log:
        access.require_runs("evaluate --log")
    model = logged_model.load_pyfunc(uri)  # before the run: a bad URI creates no run
    probabilities = logged_model.predict_probabilities(model, data.x_test)
    scores = evaluation.scores(data.y_test, probabilities)
    if params.log:
        with run_lifecycle.ended_run(
            run_name="evaluate", tags={names.TAG_ROLE: names.ROLE_EVALUATE, names.TAG_MODEL_URI: uri}
        ):
            run_lifecycle.log_missing_params({"model_uri": uri, "data_source": data.source, "data_digest": data.digest})
            model_id = getattr(model.metadata, "model_id", None)  # None for a model logged before MLflow 3
            if model_id:
                run_lifecycle.set_tags({names.TAG_MODEL_ID: model_id})
            run_lifecycle.log_metrics(scores)
            reports.log_test_report(data, probabilities, uri)
            logged_model.evaluate_classifier(uri, data, model_id)
    print(f"{uri}: test accuracy {scores['test_accuracy']:.4f}, loss {scores['test_loss']:.4f}")
    return scores
