"""`mnist-pipeline serve`: MLflow's scoring server for a registered model, following its alias,
with bounded requests and a fast path for the plain JSON request.

``mlflow models serve`` loads its model once and reads any request body whole before looking
at it. This serves MLflow's own FastAPI app (``mlflow.pyfunc.scoring_server.init``: same
/invocations, /ping, /health and /version, same JSON formats and 400 errors) for the version
that serves now (tracking/follower.py), behind two ASGI layers:

- BodyLimit answers 413 to a body over the bound, counted as it arrives (a Content-Length
  header is not trusted; the rest is read and dropped, so the client reads the answer), and
  408 to a body still incomplete after BODY_SECONDS;
- Router picks the serving version once per request, so a swap never changes a request
  midway; answers GET /model (who serves); answers a POST /invocations whose JSON body is
  ``{"inputs": <numbers>}`` of the signature's shape itself (one JSON decode, one array;
  MLflow's app decodes such a body twice and deep-copies it first, 45-90 ms for 100 images
  here) and hands any other to MLflow's app; stamps every /invocations answer with
  ``X-Model-Version``; and gives every 4xx a JSON body (MLflow's 415s are plain text, and a
  request without a Content-Type makes its app fail with a 500).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import uvicorn

from mnist_pipeline.core.params import ServeParams
from mnist_pipeline.tracking import access, follower, serving_model, store

IMAGE_JSON_BYTES = 5_000  # about one 28x28 image of "123.0, " values in a JSON request
BODY_SECONDS = 30  # longest a client may take to send its body (a slow client holds a connection)
VERSION_HEADER = b"x-model-version"
JSON = [(b"content-type", b"application/json")]
ERROR_CODES = {400: "BAD_REQUEST", 408: "REQUEST_TIMEOUT", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}


async def _answer(send, status: int, body: bytes, headers=()) -> None:
    headers = [*headers, *JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> bytes:
    return json.dumps({"error_code": ERROR_CODES.get(status, f"HTTP_{status}"), "message": message}).encode()


class BodyLimit:
    """ASGI middleware: 413 for an HTTP request body over ``max_bytes`` (never held whole) and
    408 for one not sent whole within ``seconds``, before the app sees it."""

    def __init__(self, app, max_bytes: int, seconds: float = BODY_SECONDS):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = []  # the chunks kept: none once the body is over the bound
        try:
            complete = await asyncio.wait_for(self._read(receive, body), self.seconds)
        except TimeoutError:
            complete = None  # still sending
        if complete is False:  # the client went away
            return None
        if body == [None]:
            return await _answer(send, 413, self._too_large())
        if complete is None:
            return await _answer(send, 408, _error(408, f"request body not sent whole within {self.seconds} s"))
        whole = {"type": "http.request", "body": b"".join(body), "more_body": False}
        return await self.app(scope, _replay(whole, receive), send)

    async def _read(self, receive, body: list) -> bool:
        """Reads the body into ``body`` while it is within the bound, then only to its end
        ([None]): an answer sent while the client still sends breaks its pipe. False if the
        client went away."""
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            size += len(chunk := message.get("body", b""))
            if size > self.max_bytes:
                body[:] = [None]
            elif chunk:
                body.append(chunk)
            if not message.get("more_body", False):
                return True

    def _too_large(self) -> bytes:
        most = f"send at most about {max(1, self.max_bytes // IMAGE_JSON_BYTES)} images per request"
        return _error(413, f"request body over {self.max_bytes} bytes: {most}, or raise --max-request-mb")


class Router:
    """ASGI app: each request served by the version ``holder.current`` names when it arrives,
    on the fast path or by MLflow's ``app`` (serving_model.scoring_app)."""

    def __init__(self, holder: follower.Follower, app):
        self.holder, self.app = holder, app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # the lifespan, as long as the server: set no version in its context
            return await self.app(scope, receive, send)
        version = self.holder.current  # once: a swap during this request does not touch it
        serving_model.CURRENT.set(version)  # for MLflow's app, in this request's context only
        if scope["method"] == "GET" and scope["path"] == "/model":
            return await _answer(send, 200, json.dumps(self.holder.state()).encode())
        if scope["path"] != "/invocations":
            return await self.app(scope, receive, send)
        stamp = [(VERSION_HEADER, version.version.encode())] if version.version else []
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["method"] == "POST" and not content_type:
            message = "a request needs a Content-Type header: application/json, text/csv or application/x-parquet"
            return await _answer(send, 415, _error(415, message), stamp)
        if scope["method"] == "POST" and content_type == b"application/json":
            message = await receive()  # BodyLimit hands the whole body on in one message
            answer = await asyncio.to_thread(version.predict_json, message.get("body", b""))
            if answer is not None:
                return await _answer(send, answer[0], answer[1].encode(), stamp)
            receive = _replay(message, receive)
        return await self.app(scope, receive, _stamped(send, stamp))


def _stamped(send, stamp: list):
    """``send`` that adds ``stamp`` to the answer's headers and turns a plain-text 4xx into
    MLflow's JSON error form."""
    held: dict | None = None
    chunks: list[bytes] = []

    async def stamped(message):
        nonlocal held
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), *stamp]
            if 400 <= message["status"] < 500 and not dict(headers).get(b"content-type", b"").startswith(
                b"application/json"
            ):
                held = {**message, "headers": headers}
                return None
            return await send({**message, "headers": headers})
        if held is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        text = b"".join(chunks).decode(errors="replace").strip()
        kept = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-type", b"content-length")]
        return await _answer(send, held["status"], _error(held["status"], text), kept)

    return stamped


def _replay(first: dict, receive):
    """An ASGI ``receive`` that gives ``first`` again, then what ``receive`` gives."""
    pending = [first]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


def _log_events() -> None:
    """The follower's events (loaded, refused, store gone and back), one line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s mnist-pipeline serve: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    follower.LOG.addHandler(handler)
    follower.LOG.setLevel(logging.INFO)
    follower.LOG.propagate = False


def run(params: ServeParams) -> None:
    """Serve ``params.model_uri`` until interrupted, following its alias if it has one."""
    store.check_tracking_store()
    access.require_model_read(params.model_uri, "serve")
    _log_events()
    holder = follower.Follower(*serving_model.load_first(params.model_uri), params.refresh_seconds)
    follower.LOG.info("serving %s from %s", holder.current.describe(), params.model_uri)
    holder.start()
    try:
        app = Router(holder, serving_model.scoring_app(holder.current))
        app = BodyLimit(app, int(params.max_request_mb * 1024 * 1024))
        uvicorn.run(app, host=params.host, port=params.port, log_level="info")
    finally:
        holder.stop()
