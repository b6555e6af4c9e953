"""The HTTP API: /predict, /labels, /health, OpenAPI, the web page, limits (413), malformed
requests (422), and batching of concurrent requests in a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from live_server import live_server
from rnntext.cli import main
from rnntext.inference.predictor import Predictor
from rnntext.serving.server import Limits, MicroBatcher, create_app, is_loopback

HEADLINES = [
    "Stocks rally as oil prices fall and investors cheer earnings",
    "Late goal wins the cup final for the home team",
    "New chip promises faster laptops and longer battery life",
    "Rebels and government sign cease-fire after long talks",
    "Central bank raises interest rates to fight inflation",
    "Star striker signs five-year contract with champions",
]


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor.load(trained_run, "cpu", threads=1)


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    app = create_app(predictor, limits=Limits(max_texts=8, max_chars=200, max_body_bytes=4000))
    with TestClient(app) as c:  # the context runs the lifespan, which starts the batcher
        yield c


def assert_same_prediction(got: dict, want: dict) -> None:
    assert got["label"] == want["label"]
    assert got["probabilities"].keys() == want["probabilities"].keys()
    for k, p in want["probabilities"].items():
        assert got["probabilities"][k] == pytest.approx(p, abs=1e-4)


def test_predict_matches_the_python_api(client: TestClient, predictor: Predictor) -> None:
    r = client.post("/predict", json={"texts": HEADLINES[:3]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == 3
    for got, want in zip(preds, predictor.predict(HEADLINES[:3])):
        assert_same_prediction(got, want.to_dict())
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_labels_health_openapi_and_page(client: TestClient, predictor: Predictor) -> None:
    assert client.get("/labels").json() == {"labels": predictor.labels}
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["labels"] == len(predictor.labels)
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/labels", "/health"} <= set(spec["paths"])
    assert "413" in spec["paths"]["/predict"]["post"]["responses"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="text"' in page.text and 'id="go"' in page.text and "fetch(" in page.text


@pytest.mark.parametrize(("body", "where"), [
    (b'{"texts": ["unterminated', "json_invalid"),
    (b'{"texts": "one string"}', "list_type"),
    (b'{"texts": [1, 2]}', "string_type"),
    (b'{"texts": []}', "too_short"),
    (b'{"text": ["typo in the key"]}', "missing"),
])
def test_malformed_requests_get_422_with_the_reason(client: TestClient, body: bytes, where: str) -> None:
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert where in {e["type"] for e in r.json()["detail"]}
    assert "hint" not in r.json()


def test_missing_json_content_type_gets_a_hint(client: TestClient) -> None:
    r = client.post("/predict", content=b'{"texts": ["x"]}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["hint"]


def test_limits_answer_413_and_say_which(client: TestClient) -> None:
    r = client.post("/predict", json={"texts": ["a"] * 9})
    assert r.status_code == 413 and "too many texts: 9; the limit is 8" in r.json()["detail"]
    r = client.post("/predict", json={"texts": ["ok", "x" * 201]})
    assert r.status_code == 413 and "texts[1] has 201 characters; the limit is 200" in r.json()["detail"]
    padded = b'{"texts": ["ok"]' + b" " * 4000 + b"}"  # valid JSON, within every limit but the body's
    r = client.post("/predict", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body too large" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed bytes are counted
        yield b'{"texts": ["'
        for _ in range(50):
            yield b"z" * 100
        yield b'"]}'

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body too large" in r.json()["detail"]
    # the limits leave normal requests alone
    assert client.post("/predict", json={"texts": ["x" * 200] * 8}).status_code == 200


def test_micro_batcher_joins_concurrent_requests() -> None:
    calls: list[list[str]] = []

    def fake_model(texts: list[str]):  # a deterministic stand-in: each text's "probabilities" encode it
        import torch

        calls.append(list(texts))
        return torch.tensor([[float(len(t)), float(i)] for i, t in enumerate(texts)])

    async def scenario() -> list[list[list[float]]]:
        b = MicroBatcher(fake_model, max_batch_texts=100, max_wait_s=0.05)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(["x" * (i + 1)] * (i % 3 + 1)) for i in range(10)))
        finally:
            await b.stop()

    results = asyncio.run(scenario())
    assert len(calls) < 10  # batched
    assert sum(len(c) for c in calls) == sum(i % 3 + 1 for i in range(10))
    for i, rows in enumerate(results):  # every request got back exactly its own rows
        assert len(rows) == i % 3 + 1
        assert all(row[0] == i + 1 for row in rows)


def test_loopback_default_and_detection() -> None:
    import inspect

    from rnntext.serving.server import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_serve_cli_reports_a_bad_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "run directory does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-texts", "0"]) == 2
    assert "--max-texts must be >= 1" in capsys.readouterr().err


def test_real_server_batches_concurrent_requests(trained_run: Path, predictor: Predictor) -> None:
    """uvicorn in a subprocess; 40 concurrent requests are served by fewer model calls, each
    request getting the predictions of its own texts."""
    n = 40
    texts = [f"{HEADLINES[i % len(HEADLINES)]} {i}" for i in range(n)]
    expected = [p.to_dict() for p in predictor.predict(texts)]

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/predict", json={"texts": [t]}) for t in texts))

    with live_server(trained_run, ["--batch-wait-ms", "20"]) as url:
        before = httpx.get(url + "/health").json()
        responses = asyncio.run(fire(url))
        after = httpx.get(url + "/health").json()
    assert [r.status_code for r in responses] == [200] * n
    for r, want in zip(responses, expected):
        assert_same_prediction(r.json()["predictions"][0], want)
    requests = after["requests"] - before["requests"]
    calls = after["model_calls"] - before["model_calls"]
    assert requests == n and after["texts"] - before["texts"] == n
    assert 1 <= calls < n, f"{n} concurrent requests took {calls} model calls: no batching"
    print(f"{n} concurrent requests, {calls} model calls")
