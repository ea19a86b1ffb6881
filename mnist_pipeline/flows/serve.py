"""`mnist-pipeline serve`: MLflow's scoring server for one model, with a bound on request size
and a fast path for the plain JSON request.

``mlflow models serve`` reads any request body whole before looking at it, so one huge
payload can take all the memory. This serves the same FastAPI app
(``mlflow.pyfunc.scoring_server.init``: same /invocations, /ping, /health and /version,
same JSON formats and 400 errors) behind two ASGI middlewares:

- BodyLimit answers 413 to a body over the bound, counted as it arrives (a Content-Length
  header is not trusted);
- FastJson answers a POST /invocations whose JSON body is ``{"inputs": <numbers>}`` of the
  signature's shape itself (tracking/logged_model.json_predictor: one JSON decode, one
  array); MLflow's app decodes such a body twice and deep-copies it first, about 45-90 ms
  for 100 images here. Any other body goes to MLflow's app, with its answers and errors.
"""

from __future__ import annotations

import asyncio
import json

import uvicorn

from mnist_pipeline.core.params import ServeParams
from mnist_pipeline.tracking import access, logged_model, store

IMAGE_JSON_BYTES = 5_000  # about one 28x28 image of "123.0, " values in a JSON request


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over ``max_bytes``, before the app reads it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:  # read at most max_bytes, then hand the body on
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await self.app(scope, _replay(whole, receive), send)

    async def _refuse(self, send) -> None:
        message = (
            f"request body over {self.max_bytes} bytes: send at most about "
            f"{max(1, self.max_bytes // IMAGE_JSON_BYTES)} images per request, or raise --max-request-mb"
        )
        body = json.dumps({"error_code": "REQUEST_TOO_LARGE", "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class FastJson:
    """ASGI middleware: ``predict_json(body)`` answers a JSON POST /invocations when it can
    (a str), else (None) the request goes on to the app, body and all."""

    def __init__(self, app, predict_json):
        self.app, self.predict_json = app, predict_json

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", ()))
        json_post = (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/invocations"
            and headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"
        )
        if not json_post:
            return await self.app(scope, receive, send)
        message = await receive()  # BodyLimit hands the whole body on in one message
        answer = None
        if message["type"] == "http.request" and not message.get("more_body", False):
            answer = await asyncio.to_thread(self.predict_json, message.get("body", b""))
        if answer is None:
            return await self.app(scope, _replay(message, receive), send)
        body = answer.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(first: dict, receive):
    """An ASGI ``receive`` that gives ``first`` again, then what ``receive`` gives."""
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return first

    return replay


def run(params: ServeParams) -> None:
    """Serve ``params.model_uri`` until interrupted."""
    store.check_tracking_store()
    access.require_model_read(params.model_uri, "serve")

    model = logged_model.load_pyfunc(params.model_uri)
    app = FastJson(logged_model.scoring_app(model), logged_model.json_predictor(model))
    app = BodyLimit(app, int(params.max_request_mb * 1024 * 1024))
    uvicorn.run(app, host=params.host, port=params.port, log_level="info")
