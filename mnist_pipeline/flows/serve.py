"""`mnist-pipeline serve`: MLflow's scoring server for one model, with a bound on request size.

``mlflow models serve`` reads any request body whole before looking at it, so one huge
payload can take all the memory. This serves the same FastAPI app
(``mlflow.pyfunc.scoring_server.init``: same /invocations, /ping, /health and /version,
same JSON formats and 400 errors) behind an ASGI middleware that answers 413 to a body
over the bound, counted as it arrives (a Content-Length header is not trusted).
"""

from __future__ import annotations

import json

import uvicorn

from mnist_pipeline.core.params import ServeParams
from mnist_pipeline.tracking import logged_model, store

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
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        message = (
            f"request body over {self.max_bytes} bytes: send at most about "
            f"{max(1, self.max_bytes // IMAGE_JSON_BYTES)} images per request, or raise --max-request-mb"
        )
        body = json.dumps({"error_code": "REQUEST_TOO_LARGE", "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def run(params: ServeParams) -> None:
    """Serve ``params.model_uri`` until interrupted."""
    store.check_tracking_store()

    model = logged_model.load_pyfunc(params.model_uri)
    app = BodyLimit(logged_model.scoring_app(model), int(params.max_request_mb * 1024 * 1024))
    uvicorn.run(app, host=params.host, port=params.port, log_level="info")
