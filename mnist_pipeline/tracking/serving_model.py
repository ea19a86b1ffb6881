"""One loaded version of a model, ready to answer REST requests: the fast JSON path for it,
who it is (registry version, run), MLflow's scoring app over the version that serves each
request, and answers in the form of MLflow's errors.

A version is loaded from a local copy of its artifacts by the loader it ships (each version's
its own), warmed (its first compiled call done) and checked before it answers anything: the
probabilities of its own input example must be finite and sum to 1, and a version that
replaces another must take the same input signature.
Both request paths refuse pixels that are not finite numbers in 0-255 with a 400: MLflow's
JSON decoder reads NaN and Infinity, and a model answers them as if they were digits.

The process has one MLflow scoring app, whose model is the version CURRENT names in each
request's context: the endpoints of an app made per version outlive the app and would hold
that version's model.
"""

from __future__ import annotations

import contextvars
import datetime
import http
import importlib.util
import io
import os
import tempfile
import time
import uuid
import weakref
from dataclasses import dataclass, field

import mlflow
import numpy as np
import orjson
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import scoring_server
from starlette.responses import JSONResponse, Response

from mnist_pipeline.core.data import NUM_CLASSES
from mnist_pipeline.core.errors import first_line
from mnist_pipeline.core.pictures import pixel_problem
from mnist_pipeline.tracking import model_uris, readback
from mnist_pipeline.tracking.logged_model import ModelURIError

MAX_NESTING = 32  # JSON levels; a request nests 4 ({"inputs": images, rows, pixels}), numpy allows 32
OPENING, CLOSING = np.frombuffer(b"[{", dtype=np.uint8), np.frombuffer(b"]}", dtype=np.uint8)
SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within about 1e-6; a broken model is far off
ERROR_CODES = {400: "INVALID_PARAMETER_VALUE", 413: "REQUEST_TOO_LARGE"}  # the other statuses': HTTPStatus's names


CURRENT: contextvars.ContextVar[Served] = contextvars.ContextVar("served_version")  # set per request
# Per request, a dict that answer() fills with the images, the probabilities and their compute
# seconds, for the shadow (tracking/shadowing.py): shared with the threads that predict.
ANSWER: contextvars.ContextVar[dict] = contextvars.ContextVar("answer")
LIVE = weakref.WeakSet()  # every Served not yet freed: /model reports how many


class Refused(Exception):
    """A version that loaded but must not serve; the message says why, in one line."""


@dataclass(frozen=True)
class Target:
    """What a model URI names in the registry: a name with an alias (followed) or a version."""

    name: str | None = None
    alias: str | None = None
    version: str | None = None


def target_of(model_uri: str) -> Target:
    """``models:/NAME@ALIAS`` and ``models:/NAME/3`` name a registered model; any other URI
    (``runs:/...``, ``models:/<model_id>``, a path) names none."""
    name, alias, version = model_uris.parse(model_uri) or (None, None, None)
    return Target(name, alias, version) if alias or version else Target()


def now() -> str:
    """The time in UTC to the second, as GET /model gives it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass(eq=False)  # compared by identity: two loads of one version are two models
class Served:
    """A loaded, warmed and checked model version."""

    model: object
    version: str | None  # in the registry; None for a URI that names no registered version
    run_id: str | None
    reference: np.ndarray | None = None  # its classes' counts on its validation split (the psi's reference)
    loaded_at: str = field(default_factory=now)

    def __post_init__(self):
        LIVE.add(self)

    def predict_json(self, body: bytes) -> Response | None:
        """The answer to a request body that is ``{"inputs": <numbers>}`` of the
        model's input shape, with one JSON decode (orjson: 3x the standard library's speed on
        100 images here) and one array (MLflow's server decodes the body twice with the
        standard library and deep-copies it); None for any other body, which MLflow's server
        then answers, errors included."""
        try:
            payload = orjson.loads(body)
            inputs = np.asarray(payload["inputs"]) if list(payload) == ["inputs"] else None
        except (ValueError, TypeError, OverflowError):  # not JSON or UTF-8, not an object, ragged, deep, huge ints
            inputs = None
        shape = tuple(self.model.metadata.get_input_schema().inputs[0].shape[1:])
        if inputs is None or inputs.dtype.kind not in "iuf" or inputs.shape[1:] != shape:
            if _nesting(body) > MAX_NESTING:  # MLflow's parser would fail with RecursionError: a 500
                return error(400, f"JSON nested deeper than {MAX_NESTING} levels: images are (n, 28, 28)")
            return None
        if problem := pixel_problem(inputs):
            return error(400, problem)
        answer = io.StringIO()
        scoring_server.predictions_to_json(self.answer(inputs.astype(np.float32)), answer)
        return Response(answer.getvalue(), media_type="application/json")

    def answer(self, data, params=None):
        """The model's predictions for ``data``, noted with their compute seconds in the
        request's ANSWER, if it has one."""
        start = time.perf_counter()
        probabilities = self.model.predict(data, params=params)
        if (noted := ANSWER.get(None)) is not None:
            noted.update(images=data, probabilities=np.asarray(probabilities), seconds=time.perf_counter() - start)
        return probabilities


def load(source: str, version: str | None, current: Served | None = None) -> Served:
    """The model at ``source`` (registry version ``version``) loaded, warmed and checked against
    ``current``. MlflowException and OSError: the artifacts could not be had (the store may be
    down); Refused: the version itself is bad."""
    with tempfile.TemporaryDirectory(prefix="mnist-serve-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=folder)
        try:
            model = _own_pyfunc(local)
        except Exception as err:  # anything a broken model file raises while it loads
            raise Refused(f"does not load: {first_line(err) or type(err).__name__}") from None
    check(model, current.model if current else None)
    run_id = model.metadata.run_id
    return Served(model, version, run_id, readback.validation_predicted(run_id) if run_id else None)


def _own_pyfunc(local: str) -> mlflow.pyfunc.PyFuncModel:
    """The pyfunc model in folder ``local``, loaded by the loader it ships in code/, run from
    its file as a module of its own. mlflow.pyfunc.load_model puts code/ first on sys.path
    for good and imports the loader by name, so every later version would run the loader
    the module cache holds: the first version's."""
    meta = Model.load(local)
    flavor = meta.flavors[mlflow.pyfunc.FLAVOR_NAME]
    if not flavor.get("code"):  # a loader of MLflow's own (an installed module), as load_model runs it
        return mlflow.pyfunc.load_model(local)
    loader = os.path.join(local, flavor["code"], f"{flavor['loader_module']}.py")
    spec = importlib.util.spec_from_file_location(f"{flavor['loader_module']}_{uuid.uuid4().hex}", loader)
    module = importlib.util.module_from_spec(spec)  # not put in sys.modules: no other version finds it
    spec.loader.exec_module(module)
    implementation = module._load_pyfunc(os.path.join(local, flavor["data"]))
    model = mlflow.pyfunc.PyFuncModel(meta, implementation, model_id=meta.model_id)
    model.input_example = meta.load_input_example(local)
    return model


def check(model, serving=None) -> None:
    """Refused unless ``model`` answers its input example with finite probabilities that sum
    to 1 and takes the input signature of ``serving`` (the model it would replace)."""
    schema = model.metadata.get_input_schema()
    if serving is not None and schema != serving.metadata.get_input_schema():
        raise Refused(f"input signature {schema} differs from the serving one's")
    if model.input_example is None:
        raise Refused("has no input example to check it on")
    try:
        probabilities = np.asarray(model.predict(np.asarray(model.input_example, dtype=np.float32)), dtype=np.float64)
    except Exception as err:  # the warm-up call: anything that fails here would fail a request
        raise Refused(f"fails on its input example: {first_line(err) or type(err).__name__}") from None
    if probabilities.ndim != 2 or probabilities.shape[1] != NUM_CLASSES:
        raise Refused(f"answers its input example with shape {probabilities.shape}, not (n, {NUM_CLASSES})")
    if not np.isfinite(probabilities).all():
        raise Refused("answers its input example with probabilities that are not finite")
    worst = float(np.abs(probabilities.sum(axis=1) - 1).max())
    if worst > SUM_TOLERANCE:
        raise Refused(f"answers its input example with probabilities that sum to 1 ± {worst:.3g}")


class _Current:
    """The pyfunc model as MLflow's scoring app calls it: the version CURRENT names, refusing
    pixels that are not finite numbers in 0-255 (MlflowException INVALID_PARAMETER_VALUE: the
    app answers 400)."""

    @property
    def metadata(self):
        return CURRENT.get().model.metadata

    def predict(self, data, params=None):
        pixels = np.asarray(getattr(data, "values", data))
        if pixels.dtype.kind in "iuf" and (problem := pixel_problem(pixels)):
            raise MlflowException(problem, INVALID_PARAMETER_VALUE)
        return CURRENT.get().answer(data, params=params)


def scoring_app(first: Served):
    """MLflow's scoring server app (/invocations, /ping, /health and /version, as `mlflow models
    serve` runs it) over the version CURRENT names; its input schema is ``first``'s, which
    every later version shares (check)."""
    context = contextvars.copy_context()  # CURRENT set in a copy: the caller's context holds no version
    context.run(CURRENT.set, first)
    return context.run(scoring_server.init, _Current())


def load_first(model_uri: str) -> Served:
    """The model ``model_uri`` names now (for an alias, the version it points at), loaded,
    warmed and checked; ModelURIError (one line) if it cannot serve."""
    target = target_of(model_uri)
    try:
        if target.alias is None:
            return load(model_uri, target.version)
        version = str(mlflow.MlflowClient().get_model_version_by_alias(target.name, target.alias).version)
        return load(f"models:/{target.name}/{version}", version)
    except (MlflowException, OSError, Refused) as err:
        reason = first_line(err) or type(err).__name__
        what = "served" if isinstance(err, Refused) else "loaded"
        raise ModelURIError(f"model_uri={model_uri!r} cannot be {what}: {reason}") from None


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An answer of ``status`` in the form of MLflow's errors."""
    code = ERROR_CODES.get(status) or http.HTTPStatus(status).name
    return JSONResponse({"error_code": code, "message": message}, status, headers)


def _nesting(body: bytes, chunk: int = 2**20) -> int:
    """How deep ``body``'s brackets nest (brackets inside strings count too: a bound, not a
    parse); a chunk at a time, so a 16 MiB body needs a few MiB more, not hundreds."""
    chars, depth, deepest = np.frombuffer(body, dtype=np.uint8), 0, 0
    for start in range(0, len(chars), chunk):
        part = chars[start : start + chunk]
        steps = np.isin(part, OPENING).astype(np.int8) - np.isin(part, CLOSING).astype(np.int8)
        running = np.cumsum(steps, dtype=np.int64) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest
