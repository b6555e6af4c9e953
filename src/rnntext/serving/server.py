"""HTTP API for a trained run: `rnntext serve RUN_DIR`.

POST /predict {"texts": [...]} -> {"predictions": [{"label", "probabilities"}, ...]}; GET /labels;
GET /health (with batching counters); GET / (a web page); OpenAPI at /openapi.json and /docs.

Concurrent requests are batched: each request puts its texts on a queue and waits; one worker
task takes what has arrived (waiting a few milliseconds for more, up to a number of texts), runs
the model once on all of them in a worker thread (so the event loop keeps accepting requests),
and hands each request its rows. While the model runs, new requests gather for the next batch."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..inference.predictor import Predictor


@dataclass
class Limits:
    """Per-request limits; going past one is answered with 413 and a message saying which."""

    max_texts: int = 256  # texts in one request
    max_chars: int = 20_000  # characters in one text
    max_body_bytes: int = 2_000_000  # bytes of the request body


class MicroBatcher:
    """Collects the texts of concurrent requests and runs `predict_fn` once per batch."""

    def __init__(self, predict_fn: Callable[[list[str]], Any], max_batch_texts: int = 256, max_wait_s: float = 0.002):
        self.predict_fn = predict_fn
        self.max_batch_texts = max_batch_texts
        self.max_wait_s = max_wait_s
        # One model thread: calls never overlap, and torch uses its own intra-op threads inside each call.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rnntext-model")
        self._queue: asyncio.Queue[tuple[list[str], asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self.model_calls = 0
        self.requests = 0
        self.texts = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="rnntext-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("server shutting down"))
        self._executor.shutdown(wait=False)

    async def submit(self, texts: list[str]) -> list[list[float]]:
        """Class probabilities of `texts`, computed in a batch with other waiting requests."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called (run the app with its lifespan)")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.requests += 1
        await self._queue.put((texts, fut))
        return await fut

    def _drain(self, items: list[tuple[list[str], asyncio.Future]], n: int) -> int:
        assert self._queue is not None
        while n < self.max_batch_texts and not self._queue.empty():
            item = self._queue.get_nowait()
            items.append(item)
            n += len(item[0])
        return n

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            items = [first]
            n = self._drain(items, len(first[0]))
            if n < self.max_batch_texts and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # give concurrent requests a moment to join
                n = self._drain(items, n)
            items = [it for it in items if not it[1].done()]  # the client went away
            if not items:
                continue
            texts = [t for it in items for t in it[0]]
            try:
                probs = await loop.run_in_executor(self._executor, self.predict_fn, texts)
                rows = probs.tolist()
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.model_calls += 1
            self.texts += len(texts)
            start = 0
            for batch_texts, fut in items:
                if not fut.done():
                    fut.set_result(rows[start:start + len(batch_texts)])
                start += len(batch_texts)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["Stocks rally as oil prices fall", "Late goal wins the cup final"]}]})

    texts: list[str] = Field(min_length=1, description="texts to classify")


class PredictionOut(BaseModel):
    label: str = Field(description="the most probable class")
    probabilities: dict[str, float] = Field(description="probability of every class")


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class LabelsResponse(BaseModel):
    labels: list[str]


class HealthResponse(BaseModel):
    status: str
    run: str
    labels: int
    requests: int = Field(description="prediction requests received")
    model_calls: int = Field(description="batches the model has run (fewer than requests when batching)")
    texts: int = Field(description="texts predicted")


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` (declared or streamed) with 413."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes:,} bytes"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._message()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # chunked upload, no Content-Length
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)


def _page() -> str:
    return resources.files("rnntext.serving").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(predictor: Predictor, *, limits: Limits | None = None, max_batch_texts: int = 256,
               max_wait_ms: float = 2.0) -> FastAPI:
    """The FastAPI app serving `predictor`; run it with uvicorn (its lifespan starts the batcher)."""
    limits = limits or Limits()
    labels = list(predictor.labels)
    batcher = MicroBatcher(predictor.probabilities, max_batch_texts, max_wait_ms / 1000)
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
                  f"{limits.max_body_bytes:,} bytes per body (413 past any of them).")
    app.state.batcher = batcher
    app.state.predictor = predictor
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 (what is wrong, and where), plus a hint for the common curl slip."""
        body: dict[str, Any] = {"detail": jsonable_encoder(exc.errors())}
        if "json" not in request.headers.get("content-type", ""):
            body["hint"] = "send the body as JSON with the header Content-Type: application/json"
        return JSONResponse(body, status_code=422)

    @app.post("/predict", response_model=PredictResponse, responses={
        413: {"description": "too many texts, a text too long, or the body too large"},
        422: {"description": "malformed JSON or a body that is not {\"texts\": [string, ...]}"}})
    async def predict(req: PredictRequest) -> dict[str, Any]:
        """Label and class probabilities for each text, in the order given."""
        if len(req.texts) > limits.max_texts:
            raise HTTPException(413, f"too many texts: {len(req.texts)}; the limit is {limits.max_texts} "
                                "per request, split them over several requests")
        for i, text in enumerate(req.texts):
            if len(text) > limits.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text):,} characters; the limit is "
                                    f"{limits.max_chars:,} per text")
        rows = await batcher.submit(req.texts)
        out = []
        for row in rows:
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[best], "probabilities": {k: round(p, 6) for k, p in zip(labels, row)}})
        return {"predictions": out}

    @app.get("/labels", response_model=LabelsResponse)
    async def get_labels() -> dict[str, Any]:
        """The classes the model predicts, in its output order."""
        return {"labels": labels}

    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "run": str(predictor.run.path), "labels": len(labels),
                "requests": batcher.requests, "model_calls": batcher.model_calls, "texts": batcher.texts}

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
          max_wait_ms: float = 2.0, log_level: str = "info", log: Callable[[str], None] | None = None) -> None:
    """Load the run and serve it until interrupted."""
    import uvicorn

    log = log or (lambda s: print(s, file=sys.stderr))
    predictor = Predictor.load(run_dir, device, threads)
    app = create_app(predictor, limits=limits, max_batch_texts=max_batch_texts, max_wait_ms=max_wait_ms)
    if not is_loopback(host):
        log(f"warning: listening on {host}: other machines can reach this API, which has no authentication")
    log(f"serving {run_dir} ({len(predictor.labels)} classes) on http://{_url_host(host)}:{port}/  "
        f"(API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["Limits", "MicroBatcher", "create_app", "serve"]
