"""HTTP API for a trained run: `rnntext serve RUN_DIR`.

POST /predict {"texts": [...]} -> {"predictions": [{"label", "probabilities"}, ...]}; POST /explain
{"texts": [...], "label": optional} -> {"explanations": [{"label", "attributions", ...}, ...]}; GET /labels;
GET /health (with batching counters); GET / (a web page); OpenAPI at /openapi.json and /docs.

Concurrent requests are batched: each request puts its texts on a queue and waits; one worker
task takes what has arrived (waiting a few milliseconds for more, up to a number of texts and of
characters), runs the model once on them in a worker thread (so the event loop keeps accepting
requests), and hands each request its rows. While the model runs, new requests gather for the next
batch. A long request is spread over several model calls, taking turns with the others.

Protections (docs/guides/limits.md, "Server"): per-request limits (413); a bounded queue (503 with
Retry-After when full); a request whose client has gone is dropped before the model runs it;
deadlines for a request's headers, for its body (408) and for an idle keep-alive connection;
malformed bodies get 422 with a JSON body that always serialises; SIGTERM or Ctrl-C stop taking
connections, let the requests in flight finish (up to a drain timeout) and stop."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..inference.prediction import label_set

if TYPE_CHECKING:  # the torch backend's Predictor is imported by serve() only: --backend onnx runs without torch
    from ..inference.onnx_predictor import OnnxPredictor
    from ..inference.predictor import Predictor

# Characters per model call when batching: bounds how long one call runs (a request waits at most about
# one call for its turn), whatever the requests queued. The Predictor bounds the memory of a call itself
# (rows x longest text, inference.predictor.BATCH_TOKENS).
BATCH_CHARS = 100_000

# where the guard puts the asyncio.Event set when the client of a request disconnects
DISCONNECTED = "rnntext.disconnected"


@dataclass
class Limits:
    """Per-request limits; going past one is answered with 413 and a message saying which."""

    max_texts: int = 256  # texts in one request
    max_chars: int = 20_000  # characters in one text
    max_body_bytes: int = 2_000_000  # bytes of the request body


@dataclass
class Timeouts:
    """How long a connection may take (seconds): to send a request's headers (then it is closed, with 408
    if it had started), to send the body (408), to stay idle between requests, and how long SIGTERM or
    Ctrl-C wait for the requests in flight before stopping."""

    header: float = 10.0
    body: float = 30.0
    keep_alive: float = 5.0
    drain: float = 30.0


class QueueFull(Exception):
    """The batcher's queue holds its limit of texts: answered with 503 and Retry-After."""


@dataclass(eq=False)
class _Item:
    texts: list[str]
    fut: asyncio.Future
    taken: int = 0  # texts handed to the model so far (in order)
    rows: list = field(default_factory=list)
    settled: bool = False  # done, and its texts that will not run no longer counted as waiting


class MicroBatcher:
    """Collects the texts of concurrent requests and runs `predict_fn` once per batch.

    At most `max_batch_texts` texts and `max_batch_chars` characters (one text at least) go into a
    model call; requests take turns, text by text, so a short request waits for at most about one call
    behind long ones. At most `max_queue_texts` texts wait (QueueFull past that). A request whose
    future is cancelled (its client left) is skipped: its texts that have not run never will."""

    def __init__(self, predict_fn: Callable[[list[str]], Any], max_batch_texts: int = 256, max_wait_s: float = 0.002,
                 max_queue_texts: int | None = None, max_batch_chars: int = BATCH_CHARS):
        self.predict_fn = predict_fn
        self.max_batch_texts = max_batch_texts
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts if max_queue_texts is not None else 4 * max_batch_texts
        self.max_batch_chars = max_batch_chars
        # One model thread: calls never overlap, and torch uses its own intra-op threads inside each call.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rnntext-model")
        self._items: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.pending = 0  # texts waiting for the model, of requests still waiting
        self.model_calls = 0
        self.requests = 0
        self.texts = 0
        self.dropped = 0  # requests cancelled (their client left) before all their texts ran
        self.rejected = 0  # requests refused because the queue was full

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._worker(), name="rnntext-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._items:
            item = self._items.popleft()
            if not item.fut.done():
                item.fut.set_exception(RuntimeError("server shutting down"))
                item.fut.exception()  # its waiter, if any, still gets it; no "never retrieved" warning
        self._executor.shutdown(wait=False, cancel_futures=True)

    def enqueue(self, texts: list[str]) -> asyncio.Future:
        """A future for the class probabilities of `texts` (a list of rows); cancel it to withdraw them.
        QueueFull when the queue cannot take them."""
        if self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called (run the app with its lifespan)")
        if self.pending and self.pending + len(texts) > self.max_queue_texts:
            self.rejected += 1
            raise QueueFull(f"{self.pending} texts are waiting; the queue takes {self.max_queue_texts}")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        item = _Item(list(texts), fut)
        self._items.append(item)
        self.pending += len(item.texts)
        self.requests += 1
        fut.add_done_callback(lambda _f, item=item: self._settle(item))
        self._wakeup.set()
        return fut

    async def submit(self, texts: list[str]) -> list[list[float]]:
        """Class probabilities of `texts`, computed in a batch with other waiting requests. Cancelling the
        caller withdraws the texts."""
        fut = self.enqueue(texts)
        try:
            return await fut
        finally:
            fut.cancel()  # no-op when done

    def _settle(self, item: _Item) -> None:
        """A finished request (answered, failed or cancelled): its texts that did not run never will. Runs
        from the future's callback, or earlier from the worker (callbacks run a loop turn later)."""
        if item.settled or not item.fut.done():
            return
        item.settled = True
        self.pending -= len(item.texts) - item.taken
        if item.fut.cancelled() and item.taken < len(item.texts):
            self.dropped += 1

    def _prune(self) -> None:
        for it in self._items:
            self._settle(it)
        self._items = deque(it for it in self._items if not it.fut.done())

    def _take(self) -> list[tuple[_Item, int]]:
        """The next model call's texts, as (request, index): the requests in turn, one text each."""
        chunk: list[tuple[_Item, int]] = []
        chars = 0
        live = [it for it in self._items if not it.fut.done() and it.taken < len(it.texts)]
        while live:
            more = []
            for it in live:
                n = len(it.texts[it.taken])
                if len(chunk) >= self.max_batch_texts or (chunk and chars + n > self.max_batch_chars):
                    return chunk
                chunk.append((it, it.taken))
                it.taken += 1
                self.pending -= 1
                chars += n
                if it.taken < len(it.texts):
                    more.append(it)
            live = more
        return chunk

    async def _worker(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._prune()
            if not self._items:
                self._wakeup.clear()
                continue
            if self.pending < self.max_batch_texts and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # give concurrent requests a moment to join
                self._prune()
            chunk = self._take()  # skips the requests whose client went away
            if not chunk:
                continue
            texts = [it.texts[i] for it, i in chunk]
            try:
                probs = await loop.run_in_executor(self._executor, self.predict_fn, texts)
                rows = probs.tolist()
            except Exception as e:  # noqa: BLE001 - every request in the call gets the error
                for it, _ in chunk:
                    if not it.fut.done():
                        it.fut.set_exception(e)
                continue
            self.model_calls += 1
            self.texts += len(texts)
            for (it, _), row in zip(chunk, rows):
                if it.fut.done():
                    continue
                it.rows.append(row)  # in order: a request's texts are taken in order, calls run in turn
                if len(it.rows) == len(it.texts):
                    it.fut.set_result(it.rows)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["Stocks rally as oil prices fall", "Late goal wins the cup final"]}]})

    texts: list[str] = Field(min_length=1, description="texts to classify")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0, description="no label (null) for a text whose most "
                                         "probable class has a probability below this (default: the server's "
                                         "--min-confidence, else always a label)")


class PredictionOut(BaseModel):
    label: str | None = Field(description="the most probable class; null where its probability is below "
                                          "min_confidence (abstained)")
    probabilities: dict[str, float] = Field(description="probability of every class")
    labels: dict[str, float] | None = Field(None, description="multi-label runs only: the labels whose "
                                            "probability reaches their threshold (possibly none), most probable "
                                            "first")


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["Stocks rally as oil prices fall"]}, {"texts": ["Late goal"], "label": "Sports"}]})

    texts: list[str] = Field(min_length=1, description="texts to explain")
    label: str | None = Field(None, description="the class to explain (default: each text's predicted class)")


class Attribution(BaseModel):
    token: str
    attribution: float = Field(description="the word's contribution to the probability of `label`")


class ExplanationOut(BaseModel):
    label: str = Field(description="the class explained")
    predicted: str = Field(description="the most probable class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    method: str = Field(description="ig: integrated gradients over the embedding layer, from <pad>")
    delta: float | None = Field(description="convergence delta: sum of attributions minus the change of "
                                "probability from the all-<pad> text")
    attributions: list[Attribution] = Field(description="each word of the text as tokenised, in order")
    ngrams: list[Attribution] = Field([], description="n-gram tokens (runs trained with ngrams > 1); their "
                                      "attributions are already shared out among their words")


class ExplainResponse(BaseModel):
    explanations: list[ExplanationOut]


class LabelsResponse(BaseModel):
    labels: list[str]


class HealthResponse(BaseModel):
    status: str
    run: str
    labels: int
    requests: int = Field(description="prediction requests received")
    model_calls: int = Field(description="batches the model has run (fewer than requests when batching)")
    texts: int = Field(description="texts predicted")
    queued: int = Field(0, description="texts waiting for the model now")
    dropped: int = Field(0, description="requests dropped because their client disconnected")
    rejected: int = Field(0, description="requests answered 503 because the queue was full")


# --- error bodies that always serialise ---------------------------------------------------------------

_MAX_ECHO = 200  # characters of a value echoed back in an error


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` (a piece of a request echoed in an error) as plain JSON: finite numbers, valid UTF-8
    strings (a lone surrogate becomes its escape), short: long strings and lists are cut."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**18 else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # nan, inf
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        cut = value[:_MAX_ECHO] + ("..." if len(value) > _MAX_ECHO else "")
        return cut.encode("utf-8", "backslashreplace").decode("utf-8")
    if depth >= 8:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())
        out = {json_safe(str(k)): json_safe(v, depth + 1) for k, v in items[:20]}
        if len(items) > 20:
            out["..."] = f"{len(items) - 20} more"
        return out
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value[:20]] + (["..."] if len(value) > 20 else [])
    return json_safe(str(value), depth)


def error_list(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as FastAPI shows them (loc starting with "body"), each safe to serialise; the
    input of an invalid JSON document (the whole body) is not echoed."""
    out = []
    for e in errors[:50]:
        entry: dict[str, Any] = {"type": e.get("type"), "loc": ["body", *e.get("loc", ())], "msg": e.get("msg")}
        if e.get("type") != "json_invalid" and "input" in e:
            entry["input"] = e["input"]
        if e.get("ctx"):
            entry["ctx"] = e["ctx"]
        out.append(json_safe(entry))
    return out


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that renders whatever it is given: non-finite numbers and lone surrogates are made
    safe rather than failing while the response is written (a 500 in place of the error meant)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, TypeError, UnicodeEncodeError):
            return super().render(json_safe(content))


def unprocessable(detail: list[dict[str, Any]], request: Request) -> SafeJSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if "json" not in request.headers.get("content-type", ""):
        body["hint"] = "send the body as JSON with the header Content-Type: application/json"
    return SafeJSONResponse(body, status_code=422)


# --- the connection guard -----------------------------------------------------------------------------


class RequestGuard:
    """ASGI middleware: reads each HTTP request's body before the app sees it, within `body_timeout`
    seconds (else 408) and `max_bytes` bytes, declared or streamed (else 413); a client that left
    meanwhile is not answered at all. Then watches the connection: the asyncio.Event at
    scope[DISCONNECTED] is set when the client disconnects, so the app can drop its work."""

    def __init__(self, app: Any, max_bytes: int, body_timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body too large: the limit is {self.max_bytes:,} bytes"},
                            status_code=413, headers={"connection": "close"})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks: list[bytes] = []
        received = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await JSONResponse({"detail": f"request body not received within {self.body_timeout:g} s"},
                                   status_code=408, headers={"connection": "close"})(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:  # chunked upload, no Content-Length
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)  # let the watcher see a disconnect that has already happened
        if gone.is_set():
            return
        scope[DISCONNECTED] = gone
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, replay, send)
        finally:
            watcher.cancel()


def guarded_h11(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers: a connection that has not sent
    a whole request line and headers `header_timeout` seconds after it opened (or after the previous
    response) is closed, with 408 when it had sent part of them. uvicorn's own keep-alive timeout stops
    at the first byte, so a client sending one byte at a time could hold a connection for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _header_cycle: Any = None
        _partial = False

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_cycle = self.cycle  # a request starting makes a new cycle
            self._partial = False
            self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not self._header_cycle or self.transport.is_closing():
                return  # a request arrived (pipelined, say)
            if self._partial:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                     b"connection: close\r\ncontent-length: 34\r\n\r\n"
                                     b"request headers not received in time")
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            self._partial = True
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._header_cycle:
                self._disarm_header_timer()  # the headers are in

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm_header_timer()  # for the next request on this connection
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


def _page() -> str:
    return resources.files("rnntext.serving").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(predictor: Predictor | OnnxPredictor, *, limits: Limits | None = None, max_batch_texts: int = 256,
               max_wait_ms: float = 2.0, max_queue_texts: int | None = None, body_timeout: float = 30.0,
               max_batch_chars: int = BATCH_CHARS, min_confidence: float | None = None) -> FastAPI:
    """The FastAPI app serving `predictor`; run it with uvicorn (its lifespan starts the batcher).
    `max_queue_texts`: texts that may wait for the model (default 4 x max_batch_texts; 503 past it).
    `min_confidence`: the default of the requests' field (no label below it)."""
    limits = limits or Limits()
    labels = list(predictor.labels)
    thresholds = getattr(predictor, "thresholds", None)  # a multi-label run's (inference/predictor.py)
    batcher = MicroBatcher(predictor.probabilities, max_batch_texts, max_wait_ms / 1000, max_queue_texts,
                           max_batch_chars)
    page = _page()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="rnntext", version=_version(), lifespan=lifespan,
                  description="Text classification with a recurrent network trained by rnntext. "
                  f"Limits: {limits.max_texts} texts per request, {limits.max_chars:,} characters per text, "
                  f"{limits.max_body_bytes:,} bytes per body (413 past any of them); at most "
                  f"{batcher.max_queue_texts:,} texts waiting for the model (503 with Retry-After past that).")
    app.state.batcher = batcher
    app.state.predictor = predictor
    app.add_middleware(RequestGuard, max_bytes=limits.max_body_bytes, body_timeout=body_timeout)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 (what is wrong, and where), plus a hint for the common curl slip."""
        return unprocessable([json_safe(e) for e in exc.errors()], request)

    # exclude_unset: `labels` only where set (multi-label), while an abstained `label` stays a JSON null
    @app.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True, responses={
        413: {"description": "too many texts, a text too long, or the body too large"},
        422: {"description": "a body that is not JSON, or not {\"texts\": [string, ...]}"},
        408: {"description": "the body did not arrive within the body timeout"},
        503: {"description": "the queue is full: try again after Retry-After seconds"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}}})
    async def predict(request: Request) -> Any:
        """Label and class probabilities for each text, in the order given."""
        if "json" not in request.headers.get("content-type", ""):
            return unprocessable([{"type": "content_type", "loc": ["header", "content-type"],
                                   "msg": "expected a JSON body"}], request)
        try:
            req = PredictRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return unprocessable(error_list(e.errors(include_url=False)), request)
        if len(req.texts) > limits.max_texts:
            raise HTTPException(413, f"too many texts: {len(req.texts)}; the limit is {limits.max_texts} "
                                "per request, split them over several requests")
        for i, text in enumerate(req.texts):
            if len(text) > limits.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text):,} characters; the limit is "
                                    f"{limits.max_chars:,} per text")
        gone: asyncio.Event = request.scope.get(DISCONNECTED) or asyncio.Event()
        if gone.is_set():
            return Response(status_code=499)  # the client left; nobody reads this
        try:
            fut = batcher.enqueue(req.texts)
        except QueueFull as e:
            return JSONResponse({"detail": f"the server is busy ({e}); try again shortly"}, status_code=503,
                                headers={"retry-after": "1"})
        left = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({fut, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            if not fut.done():
                fut.cancel()  # the client left (or the server stops): its texts that did not run never will
        if fut.cancelled():
            return Response(status_code=499)
        rows = fut.result()
        threshold = req.min_confidence if req.min_confidence is not None else min_confidence
        out = []
        for row in rows:
            best = max(range(len(row)), key=row.__getitem__)
            label = labels[best] if threshold is None or row[best] >= threshold else None
            item = {"label": label, "probabilities": {k: round(p, 6) for k, p in zip(labels, row)}}
            if thresholds is not None:  # multi-label: the set of labels, each with its probability
                item["labels"] = label_set(labels, row, thresholds)
            out.append(item)
        return {"predictions": out}

    explaining = [0]  # texts of /explain requests not answered yet

    @app.post("/explain", response_model=ExplainResponse, responses={
        413: {"description": "too many texts, a text too long, or the body too large"},
        422: {"description": "a body that is not JSON, not {\"texts\": [string, ...], \"label\": ...}, "
                             "or a label the model does not have"},
        501: {"description": "the server has no Captum (pip install 'rnntext[explain]')"},
        503: {"description": "too many texts wait for an explanation: try again after Retry-After seconds"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ExplainRequest"}}}}})
    async def explain(request: Request) -> Any:
        """Each word's attribution to the probability of the predicted class (or of `label`), for each
        text in the order given: integrated gradients over the embedding layer (rnntext explain). It
        costs tens to hundreds of times a prediction; it runs on the model's thread, between batches."""
        if "json" not in request.headers.get("content-type", ""):
            return unprocessable([{"type": "content_type", "loc": ["header", "content-type"],
                                   "msg": "expected a JSON body"}], request)
        try:
            req = ExplainRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return unprocessable(error_list(e.errors(include_url=False)), request)
        if req.label is not None and req.label not in labels:
            return unprocessable([{"type": "label", "loc": ["body", "label"], "input": json_safe(req.label),
                                   "msg": f"not a class of this model: {', '.join(labels)}"}], request)
        if len(req.texts) > limits.max_texts:
            raise HTTPException(413, f"too many texts: {len(req.texts)}; the limit is {limits.max_texts} "
                                "per request, split them over several requests")
        for i, text in enumerate(req.texts):
            if len(text) > limits.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text):,} characters; the limit is "
                                    f"{limits.max_chars:,} per text")
        from ..errors import ConfigError

        # explanations waiting for the model's thread are bounded like the prediction queue (503 past it)
        if explaining[0] and explaining[0] + len(req.texts) > batcher.max_queue_texts:
            return JSONResponse({"detail": f"the server is busy ({explaining[0]} texts are waiting for an "
                                 "explanation); try again shortly"}, status_code=503, headers={"retry-after": "1"})
        explaining[0] += len(req.texts)
        loop = asyncio.get_running_loop()
        try:  # on the model's one thread: never beside a prediction batch
            out = await loop.run_in_executor(batcher._executor, predictor.explain, req.texts, req.label)
        except ConfigError as e:  # no Captum
            raise HTTPException(501, str(e)) from None
        finally:
            explaining[0] -= len(req.texts)
        return {"explanations": [e.to_dict() for e in out]}

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {}).setdefault("schemas", {})["PredictRequest"] = \
                PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schema["components"]["schemas"]["ExplainRequest"] = \
                ExplainRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/labels", response_model=LabelsResponse)
    async def get_labels() -> dict[str, Any]:
        """The classes the model predicts, in its output order."""
        return {"labels": labels}

    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict[str, Any]:
        source = predictor.path if hasattr(predictor, "path") else predictor.run.path  # an export: its directory
        return {"status": "ok", "run": str(source), "labels": len(labels),
                "requests": batcher.requests, "model_calls": batcher.model_calls, "texts": batcher.texts,
                "queued": batcher.pending, "dropped": batcher.dropped, "rejected": batcher.rejected}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def _version() -> str:
    from .. import __version__

    return __version__


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, *, device: str = "auto",
          threads: int | None = None, limits: Limits | None = None, max_batch_texts: int = 256,
          max_wait_ms: float = 2.0, max_queue_texts: int | None = None, timeouts: Timeouts | None = None,
          log_level: str = "info", log: Callable[[str], None] | None = None, backend: str = "torch",
          precision: str = "fp32", calibration: bool = True, min_confidence: float | None = None) -> None:
    """Load the run and serve it until SIGTERM or Ctrl-C (which let the requests in flight finish).
    backend "onnx": `run_dir` is an export directory (`rnntext export`), run by onnxruntime without torch.
    `calibration` False: the raw probabilities, without the run's temperature; `min_confidence`: the
    default below which a text gets no label."""
    import uvicorn

    log = log or (lambda s: print(s, file=sys.stderr))
    timeouts = timeouts or Timeouts()
    if backend == "onnx":
        from ..inference.onnx_predictor import OnnxPredictor

        predictor: Predictor | OnnxPredictor = OnnxPredictor.load(run_dir, threads, calibration=calibration)
        vocabs = [predictor.vocab]
    else:
        from ..inference.predictor import Predictor

        # unset: the threads follow the cores other processes leave free (training/device.py)
        predictor = Predictor.load(run_dir, device, "auto" if threads is None else threads, precision, calibration)
        vocabs = [r.vocab for r in predictor.runs]
    for vocab in vocabs:
        vocab.ready()  # the stems of unseen words' lookup made now, not in the first request's time
    app = create_app(predictor, limits=limits, max_batch_texts=max_batch_texts, max_wait_ms=max_wait_ms,
                     max_queue_texts=max_queue_texts, body_timeout=timeouts.body, min_confidence=min_confidence)
    if not is_loopback(host):
        log(f"warning: listening on {host}: other machines can reach this API, which has no authentication")
    log(f"serving {run_dir} ({len(predictor.labels)} classes) on http://{_url_host(host)}:{port}/  "
        f"(API docs at /docs)")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=guarded_h11(timeouts.header),
                            timeout_keep_alive=timeouts.keep_alive,  # type: ignore[arg-type]
                            timeout_graceful_shutdown=timeouts.drain)  # type: ignore[arg-type]
    uvicorn.Server(config).run()  # handles SIGINT and SIGTERM alike: stop accepting, drain, stop


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["BATCH_CHARS", "Limits", "MicroBatcher", "QueueFull", "RequestGuard", "Timeouts", "create_app",
           "guarded_h11", "json_safe", "serve"]
