"""AG News download: a real HTTP server on 127.0.0.1 serving the canonical test.csv (from the shared
data), checksum verification, caching, corrupted and interrupted downloads, unreachable server."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rnntext.data import ag_news
from rnntext.errors import DataError

TEST_SHA = ag_news.SHA256["test.csv"]


class _Server:
    """Serves `files` (name -> bytes) at http://127.0.0.1:PORT/NAME and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # names sent with a Content-Length larger than the body
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def canonical_test_csv(ag_news_dir: Path) -> bytes:
    data = gzip.decompress((ag_news_dir / "test.csv.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == TEST_SHA  # the published checksum
    return data


@pytest.fixture
def server(canonical_test_csv: bytes) -> Iterator[_Server]:
    s = _Server()
    s.files["test.csv"] = canonical_test_csv
    yield s
    s.close()


def _cache_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_download_verifies_and_caches(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      canonical_test_csv: bytes) -> None:
    monkeypatch.setenv("RNNTEXT_CACHE_DIR", str(tmp_path / "cache"))
    files = {"test.csv": TEST_SHA}
    root = ag_news.ensure_downloaded(server.url, progress=False, files=files)
    assert root == tmp_path / "cache" / "ag_news"
    assert (root / "test.csv").read_bytes() == canonical_test_csv
    assert _cache_files(tmp_path / "cache") == ["ag_news/test.csv"]
    assert server.requests == ["test.csv"]
    # a second call finds the verified file and downloads nothing
    ag_news.ensure_downloaded(server.url, progress=False, files=files)
    assert server.requests == ["test.csv"]
    # the cached file reads as AG News
    rows = ag_news.read_split(root / "test.csv")
    assert len(rows) == 7600 and set(rows.labels) == set(ag_news.CLASSES)


def test_damaged_cache_file_is_downloaded_again(server: _Server, tmp_path: Path,
                                                canonical_test_csv: bytes) -> None:
    files = {"test.csv": TEST_SHA}
    root = ag_news.ensure_downloaded(server.url, root=tmp_path, progress=False, files=files)
    (root / "test.csv").write_bytes(canonical_test_csv[:1000])
    ag_news.ensure_downloaded(server.url, root=tmp_path, progress=False, files=files)
    assert server.requests == ["test.csv", "test.csv"]
    assert (root / "test.csv").read_bytes() == canonical_test_csv


def test_corrupted_download_is_rejected_and_not_kept(server: _Server, tmp_path: Path,
                                                     canonical_test_csv: bytes) -> None:
    bad = bytearray(canonical_test_csv)
    bad[12345] ^= 0x01
    server.files["test.csv"] = bytes(bad)
    with pytest.raises(DataError, match="checksum") as info:
        ag_news.ensure_downloaded(server.url, root=tmp_path, progress=False, files={"test.csv": TEST_SHA})
    assert TEST_SHA in str(info.value)
    assert _cache_files(tmp_path) == []  # not even a .part file


def test_interrupted_download_is_not_kept(server: _Server, tmp_path: Path) -> None:
    server.truncate.add("test.csv")
    # even without a checksum to catch it, a short transfer is an error, not a truncated file
    with pytest.raises(DataError, match=r"interrupted: got \d+ of \d+ bytes"):
        ag_news.download(server.url + "test.csv", tmp_path / "test.csv", None, progress=False, timeout=10)
    assert _cache_files(tmp_path) == []


def test_missing_file_on_server(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot download .*nothing.csv.*--data-dir"):
        ag_news.download(server.url + "nothing.csv", tmp_path / "x.csv", None, progress=False)
    assert _cache_files(tmp_path) == []


def test_unreachable_server(tmp_path: Path) -> None:
    # a port that was free a moment ago: nothing listens there
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"cannot download http://127\.0\.0\.1:\d+/test\.csv.*--data-dir"):
        ag_news.ensure_downloaded(f"http://127.0.0.1:{port}", root=tmp_path, progress=False,
                                  files={"test.csv": TEST_SHA})
    assert _cache_files(tmp_path) == []


def test_load_prefers_data_dir_then_env(ag_news_small: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    train, test = ag_news.load(str(ag_news_small), progress=False)
    assert (len(train), len(test)) == (2000, 500)
    # "class","title","description": title and description joined, class 1..4 named
    first = next(csv.reader(io.StringIO((ag_news_small / "test.csv").read_text(encoding="utf-8"))))
    assert test.texts[0] == first[1] + " " + first[2]
    assert test.labels[0] == ag_news.CLASSES[int(first[0]) - 1]
    assert set(train.labels) == set(ag_news.CLASSES)
    monkeypatch.setenv("RNNTEXT_DATA_DIR", str(ag_news_small))
    assert len(ag_news.load(None, progress=False)[1]) == 500
    with pytest.raises(DataError, match="does not exist"):
        ag_news.load(str(tmp_path / "nope"), progress=False)
    with pytest.raises(DataError, match="no train.csv or train.csv.gz"):
        ag_news.load(str(tmp_path), progress=False)
