"""AG News: read it from a directory, or download the canonical files, verify, and cache them."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError
from .readers import Rows, read_rows

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]

# The raw CSVs torchtext's AG_NEWS used; checksums of the uncompressed files (the md5 values are
# the ones torchtext checked; sha256 published in the shared data README).
BASE_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/"
SHA256 = {
    "train.csv": "76a0a2d2f92b286371fe4d4044640910a04a803fdd2538e0f3f29a5c6f6b672e",
    "test.csv": "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
}


def cache_dir() -> Path:
    root = os.environ.get("RNNTEXT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "rnntext" if xdg else Path.home() / ".cache" / "rnntext"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, timeout: float = 60) -> Path:
    """Download `url` to `dest` atomically; with `sha256`, nothing is kept unless it matches."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    hint = "; pass --data-dir with train.csv and test.csv instead"
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                raise DataError(f"cannot download {url}: {getattr(e, 'reason', e)}{hint}") from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                          disable=not progress, file=sys.stderr) as bar:
                    try:
                        for block in iter(lambda: resp.read(1 << 16), b""):
                            out.write(block)
                            h.update(block)
                            received += len(block)
                            bar.update(len(block))
                    except (OSError, http.client.HTTPException) as e:
                        # a dropped connection or a timeout mid-transfer: nothing is kept
                        raise DataError(f"download of {url} interrupted ({type(e).__name__}: {e}){hint}") from None
                # read(n) ends quietly when the server closes early: compare with what it announced
                if total is not None and received != total:
                    raise DataError(f"download of {url} interrupted: got {received} of {total} bytes{hint}")
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and h.hexdigest() != sha256:
            raise DataError(f"checksum mismatch for {url}: expected sha256 {sha256}, got "
                            f"{h.hexdigest()}; the download is corrupt and was not kept", str(dest))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def ensure_downloaded(base_url: str | None = None, root: Path | None = None, progress: bool = True,
                      files: dict[str, str] | None = None) -> Path:
    """The cache directory holding verified `files` (name -> sha256; default: AG News train.csv and
    test.csv), downloading what is missing or does not match its checksum."""
    base_url = base_url or os.environ.get("RNNTEXT_AG_NEWS_URL", BASE_URL)
    root = (root or cache_dir()) / "ag_news"
    for name, digest in (files or SHA256).items():
        dest = root / name
        if dest.exists() and sha256_file(dest) == digest:
            continue
        download(base_url.rstrip("/") + "/" + name, dest, digest, progress=progress)
    return root


def find_split(data_dir: Path, split: str) -> Path | None:
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        if (data_dir / name).exists():
            return data_dir / name
    return None


def read_split(path: Path, skip_bad_rows: bool = False) -> Rows:
    """Rows of a canonical AG News file, title and description joined, labels as class names."""
    rows = read_rows(path, ["1", "2"], "0", fmt="csv", header=False, skip_bad_rows=skip_bad_rows)
    out = Rows(str(path), skipped=rows.skipped)
    for text, label, line in zip(rows.texts, rows.labels, rows.lines):
        if label not in ("1", "2", "3", "4"):
            if skip_bad_rows:
                out.skipped += 1
                continue
            raise DataError(f"AG News class must be 1..4, found {label!r}", str(path), line)
        out.texts.append(text)
        out.labels.append(CLASSES[int(label) - 1])
        out.lines.append(line)
    return out


def load(data_dir: str | None, skip_bad_rows: bool = False, progress: bool = True) -> tuple[Rows, Rows]:
    """(train, test) rows from `data_dir`, $RNNTEXT_DATA_DIR, or the download cache."""
    directory = data_dir or os.environ.get("RNNTEXT_DATA_DIR")
    if directory:
        d = Path(directory)
        if not d.is_dir():
            raise DataError("AG News data directory does not exist", str(d))
    else:
        d = ensure_downloaded(progress=progress)
    paths = {s: find_split(d, s) for s in ("train", "test")}
    for split, p in paths.items():
        if p is None:
            raise DataError(f"no {split}.csv or {split}.csv.gz in the AG News data directory", str(d))
    return read_split(paths["train"], skip_bad_rows), read_split(paths["test"], skip_bad_rows)
