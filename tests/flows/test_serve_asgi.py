"""serve's ASGI layers on their own, without a server: the body bound and the body deadline."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from mnist_pipeline.flows import serve


def call(app, chunks: list[bytes], stall: bool = False) -> tuple[list[dict], list[bytes], list[dict]]:
    """Runs ``app`` on a POST whose body comes in ``chunks`` (then, if ``stall``, never ends);
    the messages it sent, the body the inner app got (if it was called), the chunks unread."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/invocations",
        "headers": [(b"content-type", b"application/json")],
    }
    pending = [
        {"type": "http.request", "body": c, "more_body": stall or i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent, seen = [], []

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that stops sending

    async def send(message):
        sent.append(message)

    async def inner(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    asyncio.run(asyncio.wait_for(app(inner)(scope, receive, send), timeout=10))  # a missing deadline fails, not hangs
    return sent, seen, pending


def test_a_body_over_the_bound_is_read_to_its_end_and_answered_413_without_the_app():
    sent, seen, unread = call(lambda inner: serve.BodyLimit(inner, max_bytes=10), [b"x" * 6, b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 413 and seen == [] and unread == []
    assert json.loads(sent[1]["body"])["error_code"] == "REQUEST_TOO_LARGE"


def test_a_body_within_the_bound_reaches_the_app_whole():
    sent, seen, _ = call(lambda inner: serve.BodyLimit(inner, max_bytes=10), [b"12345", b"6789"])
    assert sent[0]["status"] == 200 and seen == [b"123456789"]


def test_a_body_not_sent_within_the_deadline_is_answered_408():
    sent, seen, _ = call(lambda inner: serve.BodyLimit(inner, max_bytes=10, seconds=0.2), [b"12"], stall=True)
    assert sent[0]["status"] == 408 and seen == []
    assert "not sent whole within 0.2 s" in json.loads(sent[1]["body"])["message"]


def test_feedback_is_refused_403_when_the_server_has_no_token(monkeypatch):
    monkeypatch.delenv(serve.FEEDBACK_TOKEN, raising=False)
    scope = {"type": "http", "method": "POST", "path": "/feedback", "headers": [(b"authorization", b"Bearer x")]}

    async def receive():
        return {"type": "http.request", "body": b'{"request_id": "a", "labels": [1]}', "more_body": False}

    response = asyncio.run(serve.feedback(Request(scope, receive), shadow=None))  # never reaches the shadow
    assert response.status_code == 403 and serve.FEEDBACK_TOKEN in json.loads(response.body)["message"]
