"""`mnist-pipeline serve`: MLflow's scoring server for a registered model, following its alias,
with bounded requests and a fast path for the plain JSON request.

``mlflow models serve`` loads its model once and reads any request body whole before looking
at it. This serves MLflow's own FastAPI app (``mlflow.pyfunc.scoring_server.init``: same
/invocations, /ping, /health and /version, same JSON formats and 400 errors) for the version
that serves now (tracking/follower.py), with a route and a middleware of its own, behind
BodyLimit:

- BodyLimit answers 413 to a body over the bound, counted as it arrives (a Content-Length
  header is not trusted; the rest is read and dropped, so the client reads the answer), and
  408 to a body still incomplete after BODY_SECONDS;
- GET /model says who serves, who is shadowed, and the live figures (tracking/shadowing.py);
- POST /feedback takes the true labels of an answer (its X-Request-Id) from a holder of the
  token in MNIST_PIPELINE_FEEDBACK_TOKEN;
- the middleware picks the serving version once per request, so a swap never changes a
  request midway; answers a POST /invocations whose JSON body is ``{"inputs": <numbers>}`` of
  the signature's shape itself (one JSON decode, one array; MLflow's app decodes such a body
  twice and deep-copies it first, 45-90 ms for 100 images here) and hands any other to
  MLflow's handler; stamps every /invocations answer with ``X-Model-Version`` and
  ``X-Request-Id``, hands every answer to the shadow; and gives every 4xx a JSON body (MLflow's
  415s are plain text, and a request without a Content-Type makes its app fail with a 500).
"""

import asyncio
import hmac
import logging
import os
import uuid

import orjson
import uvicorn
from starlette.requests import ClientDisconnect, Request

from mnist_pipeline import names
from mnist_pipeline.core.commands import ServeParams
from mnist_pipeline.tracking import access, follower, serving_model, serving_runs, shadowing, store

IMAGE_JSON_BYTES = 5_000  # about one 28x28 image of "123.0, " values in a JSON request
BODY_SECONDS = 30  # longest a client may take to send its body (a slow client holds a connection)
VERSION_HEADER, REQUEST_ID_HEADER = "x-model-version", "x-request-id"
FEEDBACK_TOKEN = "MNIST_PIPELINE_FEEDBACK_TOKEN"  # the variable that holds the token /feedback asks for


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over ``max_bytes`` (never held whole) and
    408 for one not sent whole within ``seconds``, before the app sees it."""

    def __init__(self, app, max_bytes: int, seconds: float = BODY_SECONDS):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.seconds):
                # read to its end even over the bound: an answer sent while the client still sends breaks its pipe
                async for chunk in Request(scope, receive).stream():
                    size += len(chunk)
                    if size <= self.max_bytes:
                        chunks.append(chunk)
        except TimeoutError:  # still sending
            message = f"request body not sent whole within {self.seconds} s"
            return await serving_model.error(408, message)(scope, receive, send)
        except ClientDisconnect:  # the client went away
            return None
        if size > self.max_bytes:
            most = f"send at most about {max(1, self.max_bytes // IMAGE_JSON_BYTES)} images per request"
            message = f"request body over {self.max_bytes} bytes: {most}, or raise --max-request-mb"
            return await serving_model.error(413, message)(scope, receive, send)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():  # the whole body in one message, then what the client sends (its disconnect)
            return pending.pop() if pending else await receive()

        return await self.app(scope, replay, send)


def serving_app(holder: follower.Follower, max_bytes: int, shadow: shadowing.Shadow, challenger=None, runs=None):
    """The ASGI app that serves the version ``holder.current`` names when each request arrives:
    MLflow's (serving_model.scoring_app) with GET /model, POST /feedback and the middleware,
    behind BodyLimit; ``shadow`` counts the answers and shadows ``challenger`` (a Follower);
    ``runs`` (ServingRuns) records the windows."""
    app = serving_model.scoring_app(holder.current)
    app.get("/model")(
        lambda: {
            **holder.state(),
            "challenger": challenger and challenger.state(),
            **shadow.state(holder.current.reference),
            **(runs.state() if runs else {}),
        }
    )

    @app.post("/feedback")
    async def take_feedback(request: Request):
        return await feedback(request, shadow)

    @app.middleware("http")
    async def route(request: Request, call_next):
        version = holder.current  # once: a swap during this request does not touch it
        serving_model.CURRENT.set(version)  # for MLflow's handler, in this request's context only
        if request.url.path != "/invocations":
            return await call_next(request)
        stamp = {VERSION_HEADER: version.version} if version.version else {}
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        stamp[REQUEST_ID_HEADER] = uuid.uuid4().hex
        if request.method == "POST" and not content_type:
            message = "a request needs a Content-Type header: application/json, text/csv or application/x-parquet"
            return serving_model.error(415, message, stamp)
        answer, noted = None, {}  # the fast path's answer, else MLflow's handler's; what predicted
        serving_model.ANSWER.set(noted)
        with shadow.champion_working():  # the challenger waits for an idle moment
            if request.method == "POST" and content_type == "application/json":
                answer = await asyncio.to_thread(version.predict_json, await request.body())
            response = answer or await call_next(request)
        response.headers.update(stamp)
        if noted and response.status_code == 200:
            shadow.answered(stamp[REQUEST_ID_HEADER], champion=version, **noted)
        if 400 <= response.status_code < 500 and "json" not in response.headers.get("content-type", ""):
            text = b"".join([chunk async for chunk in response.body_iterator]).decode(errors="replace").strip()
            return serving_model.error(response.status_code, text, stamp)
        return response

    return BodyLimit(app, max_bytes)


async def feedback(request: Request, shadow: shadowing.Shadow):
    """POST /feedback: ``{"request_id": ..., "labels": [...]}`` from a holder of the token."""
    token = os.environ.get(FEEDBACK_TOKEN)
    if not token:
        return serving_model.error(403, f"feedback is off: the server was started without {FEEDBACK_TOKEN}")
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, f"Bearer {token}".encode()):
        return serving_model.error(401, "feedback needs the header Authorization: Bearer <the feedback token>")
    try:
        body = orjson.loads(await request.body())
        request_id, labels = (body["request_id"], body["labels"]) if isinstance(body, dict) else (None, None)
    except (ValueError, KeyError):
        request_id = labels = None
    if problem := shadow.feedback(request_id, labels):
        return serving_model.error(*problem)
    return {"request_id": request_id, "labels": len(labels)}


def _challenger(params: ServeParams) -> follower.Follower | None:
    """A follower of the challenger alias of the model ``params.model_uri`` follows, or None
    (no alias followed, shadowing off, or the model URI names the challenger itself)."""
    target = serving_model.target_of(params.model_uri)
    if target.alias in (None, names.CHALLENGER) or params.shadow_fraction == 0 or params.refresh_seconds == 0:
        return None
    uri = f"models:/{target.name}@{names.CHALLENGER}"
    try:
        first = serving_model.load_first(uri)
    except serving_model.ModelURIError as err:  # no challenger yet, or a bad one: the follower says when it comes
        follower.LOG.info("no challenger to shadow now (%s)", err)
        first = None
    return follower.Follower(uri, first, params.refresh_seconds)


def _serving_runs(params: ServeParams, holder: follower.Follower, challenger) -> serving_runs.ServingRuns:
    """The serving runs of this server: the pair is the champion's version and the challenger's
    while it is shadowed (another version, held), else None."""

    def pair():
        champion, shadowed = holder.current.version, challenger and challenger.shadowed()
        return champion, shadowed.version if shadowed and shadowed.version != champion else None

    model = holder.target.name or params.model_uri
    experiment = serving_runs.experiment_of(holder.target.name or "unregistered", params.serving_experiment)
    return serving_runs.ServingRuns(
        model, experiment, pair, params.shadow_fraction, params.window_seconds, lambda: holder.current.reference
    )


def run(params: ServeParams) -> None:
    """Serve ``params.model_uri`` until interrupted, following its alias if it has one."""
    store.check_tracking_store()
    access.require_model_read(params.model_uri, "serve")
    # the follower's events (loaded, refused, store gone and back), one line each on stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s mnist-pipeline serve: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    follower.LOG.addHandler(handler)
    follower.LOG.setLevel(logging.INFO)
    follower.LOG.propagate = False
    holder = follower.Follower(params.model_uri, serving_model.load_first(params.model_uri), params.refresh_seconds)
    follower.LOG.info("serving %s from %s", holder.describe(), params.model_uri)
    challenger = _challenger(params)
    runs = _serving_runs(params, holder, challenger)
    shadow = shadowing.Shadow(
        lambda: challenger and challenger.shadowed(),
        params.shadow_fraction,
        params.shadow_timeout_seconds,
        params.window_seconds,
        runs.on_window,
    )
    followers = [f for f in (holder, challenger) if f is not None]
    for each in followers:
        each.start()
    try:
        app = serving_app(holder, int(params.max_request_mb * 1024 * 1024), shadow, challenger, runs)
        uvicorn.run(app, host=params.host, port=params.port, log_level="info")
    finally:
        runs.close(*shadow.stop())
        for each in followers:
            each.stop()
