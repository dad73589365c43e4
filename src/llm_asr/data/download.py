"""Resumable, verified HTTP downloads and safe tar unpacking (for the real MLS archives).

`download(url, dest)` keeps partial data in `dest.part` and resumes it with an HTTP
Range request; a server that ignores Range (200 instead of 206) restarts the file.
The finished file must have the size the server announced and, when given, the
expected SHA-256; only then is it renamed to `dest` (so `dest` existing means verified).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from llm_asr.errors import UserError

BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _total_size(resp, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200)."""
    rng = resp.headers.get("Content-Range")
    if resp.status == 206 and rng:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", rng)
        if not m or int(m.group(1)) != offset:
            raise UserError(f"server answered a bad Content-Range '{rng}' for a resume at byte {offset}")
        return int(m.group(3)) if m.group(3) != "*" else None
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


def _fetch(url: str, part: Path, timeout: float) -> int | None:
    """Append the rest of `url` to `part`; returns the announced total size (None if unknown)."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the part file is already whole
            return offset
        raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"download of {url} failed: {getattr(e, 'reason', e)} (check the network or data.mls.base_url)"
        ) from None
    with resp:
        if offset and resp.status != 206:
            offset = 0  # Range ignored: start over
        total = _total_size(resp, offset)
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name) as bar,
        ):
            try:
                for block in iter(lambda: resp.read(BLOCK), b""):
                    f.write(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, OSError) as e:
                f.write(getattr(e, "partial", b""))
                raise UserError(
                    f"download of {url} interrupted at {f.tell()} bytes ({type(e).__name__}); run again to resume"
                ) from None
    return total


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> dict:
    """Download `url` to `dest` (resuming `dest.part`), verify size and checksum."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        digest = sha256_file(dest)
        if sha256 and digest != sha256:
            raise UserError(
                f"{dest}: cached file has SHA-256 {digest}, expected {sha256}; delete it to download again"
            )
        return {"path": str(dest), "bytes": dest.stat().st_size, "sha256": digest, "downloaded": False}
    part = dest.with_name(dest.name + ".part")
    total = _fetch(url, part, timeout)
    size = part.stat().st_size
    if total is not None and size != total:
        raise UserError(f"{url}: got {size} of {total} bytes (connection dropped?); run again to resume")
    digest = sha256_file(part)
    if sha256 and digest != sha256:
        part.unlink()
        raise UserError(
            f"{url}: SHA-256 {digest} does not match the expected {sha256}; the partial file was removed"
        )
    part.replace(dest)
    return {"path": str(dest), "bytes": size, "sha256": digest, "downloaded": True}


def unpack(archive: Path, dest: Path, keep: callable[[str], bool] = lambda name: True) -> int:
    """Extract the members of a .tar(.gz) for which `keep(name)` holds; returns their count.

    Uses tarfile's 'data' filter: no absolute paths, no escaping `dest`, no device files.
    """
    from tqdm.auto import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tqdm(tar, desc=f"unpack {archive.name}", unit="file"):
                if keep(member.name):
                    tar.extract(member, dest, filter="data")
                    n += 1
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: not a readable tar archive ({e}); delete it to download again") from None
    return n
