"""Load test of `rnntext serve`: N concurrent clients on loopback, bounded in time and in requests.

Starts the server itself (uvicorn, in a subprocess, on a free 127.0.0.1 port) from --run-dir, or
first trains a small run (the default GRU, one short epoch on AG News) when none is given. For
single-text and 32-text requests it reports requests/s, texts/s, p50/p99 latency, errors (must be
0) and the mean number of texts per model call (how much the server's batching joined requests).
Clients and server share the machine's cores, so the figures are a lower bound.

--disturb measures the server's protection against clients that leave (issue 16): one-text requests
from --clients clients, first alone, then while --disturbers other clients each send a large request
(--max-texts texts of --max-chars characters, just under the 2,000,000-byte body limit) and close
the socket at once, again every --disturb-interval seconds. It reports the one-text latency of both
phases in one run (the target: disturbed p99 within 2x undisturbed) and how many of the large
requests' texts the model ran (those whose client left should be dropped before it runs them).
Results: benchmarks/results/serve_load_disturbed.json / .md.

    python3 benchmarks/serve_load.py --run-dir runs/gru
    python3 benchmarks/serve_load.py --quick          # trains a run, ~30 s of load
    python3 benchmarks/serve_load.py --run-dir runs/default --disturb   # ~1.5 min
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    data_dir,
    machine,
    markdown_document,
    md_header,
    md_table,
    quiet_log,
    short_command,
    write_json,
    write_markdown,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_file(data: str, split: str) -> Path:
    for name in (f"{split}.csv.gz", f"{split}.csv"):
        if (Path(data) / name).exists():
            return Path(data) / name
    sys.exit(f"no {split}.csv[.gz] in {data}")


def _head(path: Path, n: int) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def train_small_run(data: str, out: Path) -> Path:
    """The default model (bidirectional GRU, embed/hidden 128) on 5,000 rows, 30 batches: its speed,
    not its accuracy, is what a load test needs."""
    from rnntext import RunConfig, train

    subset = out.parent / "data"
    subset.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", 5000), ("test", 500)):
        (subset / f"{split}.csv").write_bytes(_head(split_file(data, split), rows))
    cfg = RunConfig()
    cfg.data.dataset, cfg.data.data_dir = "ag_news", str(subset)
    cfg.train.epochs, cfg.train.epoch_size, cfg.train.device, cfg.train.threads = 1, 30, "cpu", 1
    print(f"training a small run in {out} ...", flush=True)
    t0 = time.perf_counter()
    train(cfg, str(out), progress=False, log=quiet_log)
    print(f"trained in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def headlines(data: str, n: int = 2000) -> list[str]:
    """Title + description of AG News test rows: real lengths for the model."""
    path = split_file(data, "test")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return [f"{row[1]} {row[2]}" for row, _ in zip(csv.reader(f), range(n))]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def scenario(url: str, texts: list[str], per_request: int, clients: int, duration: float,
                   max_requests: int, background: Any = None) -> dict[str, Any]:
    """`clients` clients sending `per_request` texts per request for `duration` seconds; `background`
    (stop_at -> coroutine) runs beside them for the same time."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        for i in range(3):  # warm-up: connections, first model calls
            await c.post("/predict", json={"texts": texts[i:i + per_request]})
        before = (await c.get("/health")).json()
        stop_at = time.perf_counter() + duration

        async def client(k: int) -> None:
            nonlocal sent
            i = k * 97
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                batch = [texts[(i + j) % len(texts)] for j in range(per_request)]
                i += per_request
                t0 = time.perf_counter()
                try:
                    r = await c.post("/predict", json={"texts": batch})
                    if r.status_code != 200 or len(r.json()["predictions"]) != per_request:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        extra = [background(stop_at)] if background is not None else []
        done_extra = await asyncio.gather(*(client(k) for k in range(clients)), *extra)
        elapsed = time.perf_counter() - t0
        after = (await c.get("/health")).json()
    calls = after["model_calls"] - before["model_calls"]
    done = len(latencies)
    return {
        "texts_per_request": per_request, "clients": clients, "seconds": round(elapsed, 3),
        "requests": done, "errors": len(errors), "first_errors": errors[:3],
        "requests_per_second": round(done / elapsed, 1), "texts_per_second": round(done * per_request / elapsed, 1),
        "latency_ms": {"p50": round(1000 * percentile(latencies, 50), 2) if done else None,
                       "p99": round(1000 * percentile(latencies, 99), 2) if done else None,
                       "mean": round(1000 * statistics.fmean(latencies), 2) if done else None},
        "model_calls": calls, "texts_per_model_call": round((after["texts"] - before["texts"]) / calls, 1)
        if calls else None,
        "texts_run": after["texts"] - before["texts"],
        "dropped": after.get("dropped", 0) - before.get("dropped", 0),
        "rejected": after.get("rejected", 0) - before.get("rejected", 0),
        **(done_extra[-1] if extra else {}),
    }


def large_request(texts: list[str], max_texts: int = 256, max_chars: int = 20_000,
                  max_body: int = 1_950_000) -> bytes:
    """A whole HTTP request whose JSON body is as large as the server's limits allow: texts of
    `max_chars` characters (real headlines, joined), as many as fit in `max_body` bytes."""
    joined = " ".join(texts)
    text = (joined * (max_chars // max(1, len(joined)) + 1))[:max_chars]
    one = len(json.dumps(text)) + 2
    n = max(1, min(max_texts, (max_body - 20) // one))
    body = json.dumps({"texts": [text] * n}).encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def leavers(port: int, request: bytes, clients: int, interval: float, max_sends: int) -> Any:
    """A background for `scenario`: `clients` clients that each send `request` and close the socket at
    once, together, every `interval` seconds, until the scenario ends (at most `max_sends` requests)."""

    async def run(stop_at: float) -> dict[str, Any]:
        sent, failed = 0, 0

        async def one() -> None:
            nonlocal sent, failed
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
                writer.close()  # at once: the answer is never read
                await writer.wait_closed()
                sent += 1
            except OSError:
                failed += 1

        while time.perf_counter() < stop_at and sent + failed < max_sends:
            wave = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(clients)))
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - wave)))
        return {"large_requests_sent": sent, "large_requests_failed": failed,
                "large_request_bytes": len(request)}

    return run


def start_server(run_dir: Path, port: int, threads: int | None, wait_ms: float, log: Any) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rnntext", "serve", str(run_dir), "--port", str(port), "--device", "cpu",
           "--log-level", "warning", "--batch-wait-ms", str(wait_ms)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"the server exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("the server did not start within 120 s")


def markdown_disturbed(r: dict[str, Any]) -> str:
    """The table of serve_load_disturbed.md: one-text latency alone and beside clients that send large
    requests and leave."""
    srv, d = r["server"], r["disturb"]
    rows = []
    for name, x in (("undisturbed", r["undisturbed"]), ("disturbed", r["disturbed"])):
        rows.append([name, x["clients"], f"{x['requests_per_second']:,.0f}", f"{x['latency_ms']['p50']:.1f}",
                     f"{x['latency_ms']['p99']:.1f}", x["errors"], x.get("large_requests_sent", 0),
                     f"{x['texts_run'] - x['requests']:,}"])
    what = (f"`rnntext serve` on 127.0.0.1 (run `{srv['run_dir']}`, {srv['threads']} threads, batching wait "
            f"{srv['batch_wait_ms']:g} ms): {r['undisturbed']['clients']} clients send one-text requests for "
            f"{r['duration_s']:g} s, alone, then while {d['clients']} other clients each send a "
            f"{d['request_bytes'] / 1e6:.1f} MB request ({d['texts']} texts of {d['chars']:,} characters) and close "
            f"the socket at once, together, every {d['interval_s']:g} s. Disturbed p99 / undisturbed p99: "
            f"**{r['p99_ratio']:.2f}** (target: at most 2). \"large texts run\": texts of the large requests the "
            f"model ran (their clients had left). Clients and server share the cores.")
    return (md_header(short_command(r.get("command")), r.get("machine"), what) + "\n"
            + md_table(["phase", "one-text clients", "requests/s", "p50 ms", "p99 ms", "errors",
                        "large requests sent", "large texts run"], rows, "lrrrrrrr"))


def markdown(results: dict[str, Any]) -> str:
    """The table of serve_load.md: per request size, throughput, latency, errors and the server's batching
    (serve_load_disturbed.md: see markdown_disturbed)."""
    if results.get("mode") == "disturb":
        return markdown_disturbed(results)
    r = results
    srv = r["server"]
    table = [[x["texts_per_request"], x["clients"], f"{x['requests_per_second']:,.0f}", f"{x['texts_per_second']:,.0f}",
              f"{x['latency_ms']['p50']:.0f}", f"{x['latency_ms']['p99']:.0f}", x["errors"],
              f"{x['texts_per_model_call']:.1f}"] for x in r["results"]]
    command = r.get("command") or f"python3 benchmarks/serve_load.py --run-dir {srv['run_dir']}"
    what = (f"`rnntext serve` on 127.0.0.1 (run `{srv['run_dir']}`, {srv['threads']} threads, batching wait "
            f"{srv['batch_wait_ms']:g} ms) under concurrent clients on the same machine, {r['duration_s']:g} s per "
            f"request size (at most {r['max_requests']:,} requests). Clients and server share the cores, so the "
            f"figures are a lower bound.")
    if not r.get("command"):
        what += " (This JSON does not record its command; the one shown is rebuilt from its settings.)"
    return (md_header(short_command(command), r.get("machine"), what) + "\n"
            + md_table(["texts per request", "clients", "requests/s", "texts/s", "p50 ms", "p99 ms", "errors",
                        "texts per model call"], table, "rrrrrrrr"))


def run_disturbed(args: argparse.Namespace, url: str, port: int, texts: list[str]) -> dict[str, Any]:
    request = large_request(texts)
    n_texts = json.loads(request.split(b"\r\n\r\n", 1)[1])["texts"]
    max_sends = args.disturbers * int(args.duration / max(args.disturb_interval, 0.01) + 2)
    phases = {}
    for name, background in (("undisturbed", None),
                             ("disturbed", leavers(port, request, args.disturbers, args.disturb_interval, max_sends))):
        r = asyncio.run(scenario(url, texts, 1, args.clients, args.duration, args.max_requests, background))
        phases[name] = r
        lat = r["latency_ms"]
        print(f"{name:>11}: {args.clients} clients {r['requests_per_second']:8.1f} req/s  p50 {lat['p50']} ms  "
              f"p99 {lat['p99']} ms  errors {r['errors']}  large requests sent {r.get('large_requests_sent', 0)}  "
              f"large texts run {r['texts_run'] - r['requests']}  dropped {r['dropped']}", flush=True)
    ratio = phases["disturbed"]["latency_ms"]["p99"] / phases["undisturbed"]["latency_ms"]["p99"]
    print(f"disturbed p99 / undisturbed p99 = {ratio:.2f} (target <= 2)", flush=True)
    return {"benchmark": "serve_load", "mode": "disturb", "command": "python3 " + " ".join(sys.argv),
            "machine": machine(args.threads),
            "server": {"run_dir": str(args.run_dir or "trained: default GRU, 30 batches"),
                       "threads": args.threads or os.cpu_count(), "batch_wait_ms": args.batch_wait_ms,
                       "host": "127.0.0.1"},
            "duration_s": args.duration, "max_requests": args.max_requests,
            "disturb": {"clients": args.disturbers, "interval_s": args.disturb_interval, "request_bytes": len(request),
                        "texts": len(n_texts), "chars": len(n_texts[0])},
            **phases, "p99_ratio": round(ratio, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", help="run directory to serve (default: train a small one first)")
    ap.add_argument("--data-dir", help="AG News directory, for the texts and for training (default: shared data)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per scenario (10)")
    ap.add_argument("--max-requests", type=int, default=20_000, help="requests per scenario at most (20000)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 32], help="texts per request (1 32)")
    ap.add_argument("--threads", type=int, help="the server's torch threads (default: all cores)")
    ap.add_argument("--batch-wait-ms", type=float, default=2.0, help="the server's batching wait (2)")
    ap.add_argument("--quick", action="store_true", help="3 s per scenario")
    ap.add_argument("--disturb", action="store_true", help="one-text latency alone, then beside clients that send "
                    "large requests and leave (results: serve_load_disturbed.json)")
    ap.add_argument("--disturbers", type=int, default=10, help="--disturb: clients sending large requests (10)")
    ap.add_argument("--disturb-interval", type=float, default=1.0,
                    help="--disturb: seconds between their waves of large requests (1)")
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/serve_load.json)")
    args = ap.parse_args()
    if args.quick:
        args.duration = 3.0
    data = data_dir(args.data_dir)
    texts = headlines(data)
    with tempfile.TemporaryDirectory(prefix="serve_load.") as tmp, tempfile.TemporaryFile() as log:
        run_dir = Path(args.run_dir) if args.run_dir else train_small_run(data, Path(tmp) / "run")
        port = free_port()
        t0 = time.perf_counter()
        proc = start_server(run_dir, port, args.threads, args.batch_wait_ms, log)
        print(f"server up in {time.perf_counter() - t0:.0f}s on 127.0.0.1:{port}", flush=True)
        url = f"http://127.0.0.1:{port}"
        if args.disturb:
            try:
                payload = run_disturbed(args, url, port, texts)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            out = Path(args.out) if args.out else RESULTS / "serve_load_disturbed.json"
            write_json(out.stem, payload, out.parent)
            write_markdown(out.stem, markdown_document(out.stem, "serve_load.py", markdown(payload)), out.parent)
            return 1 if payload["undisturbed"]["errors"] or payload["disturbed"]["errors"] else 0
        try:
            results = []
            for size in args.sizes:
                r = asyncio.run(scenario(url, texts, size, args.clients, args.duration, args.max_requests))
                results.append(r)
                lat = r["latency_ms"]
                print(f"{size:>3} texts/request, {args.clients} clients: {r['requests_per_second']:8.1f} req/s "
                      f"{r['texts_per_second']:9.1f} texts/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
                      f"errors {r['errors']}  texts/model call {r['texts_per_model_call']}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    payload = {"benchmark": "serve_load", "command": "python3 " + " ".join(sys.argv), "machine": machine(args.threads),
               "server": {"run_dir": str(args.run_dir or "trained: default GRU, 30 batches"),
                          "threads": args.threads or os.cpu_count(), "batch_wait_ms": args.batch_wait_ms,
                          "host": "127.0.0.1"},
               "duration_s": args.duration, "max_requests": args.max_requests, "results": results}
    out = Path(args.out) if args.out else RESULTS / "serve_load.json"
    write_json(out.stem, payload, out.parent)
    write_markdown(out.stem, markdown_document(out.stem, "serve_load.py", markdown(payload)), out.parent)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
