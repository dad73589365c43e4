"""Add `--hash=sha256:` to every pin of requirements.lock, from the files pip itself would install.

Run: `python tools/hash_lock.py [requirements.lock]` (or `make hash-lock`). It asks pip for a dry-run
install report of the lock (no dependencies, nothing installed, no wheel downloaded when the index
serves metadata) and writes each pin back as `name==version --hash=sha256:<digest>`, the digest
of the exact archive pip chose from the configured indexes (PyPI and this machine's local ones).
`make setup` then installs with `--require-hashes`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def pins(lock: Path) -> list[str]:
    """`name==version` of every pin, with any existing hashes and continuations dropped."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    return [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def hashes(reqs: list[str]) -> dict[str, str]:
    """canonical name -> sha256 of the archive pip would install."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.txt"
        plain.write_text("\n".join(reqs) + "\n")
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
                        "-r", str(plain), "--report", str(report)], check=True)
        data = json.loads(report.read_text())
    return {_canon(i["metadata"]["name"]): i["download_info"]["archive_info"]["hashes"]["sha256"]
            for i in data["install"]}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> None:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
    reqs = pins(lock)
    digests = hashes(reqs)
    missing = [r for r in reqs if _canon(r.split("==")[0]) not in digests]
    if missing:
        sys.exit(f"no hash for {missing}")
    lock.write_text("".join(f"{r} \\\n    --hash=sha256:{digests[_canon(r.split('==')[0])]}\n" for r in reqs))
    print(f"{lock}: {len(reqs)} pins hashed")


if __name__ == "__main__":
    main()
