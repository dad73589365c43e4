"""lhotse manifests from validated MLS items: what `lhotse.recipes.mls.prepare_mls` builds, minus
the utterances `read_mls_dir` skipped.

Written under the manifests dir, with lhotse's MLS recipe names:
`mls-<language>_recordings_<split>.jsonl.gz`, `mls-<language>_supervisions_<split>.jsonl.gz`,
and one CutSet per split over all languages, `cuts_<split>.jsonl.gz`. Every supervision
carries `language` (the MLS name, e.g. "german") and the transcript as `text`.
Audio paths are relative to the workdir (`data/corpus/...`, absolute only for audio outside
it), so a manifest stays valid when the workdir moves (a fresh clone + `dvc pull`, a KFP
artifact): read them with `load_cuts(path, workdir)`, which resolves them. Items are sorted
by id, so the files are byte-stable.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lhotse import AudioSource, CutSet, MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.qa import validate_recordings_and_supervisions

from llm_asr.data.audio import SAMPLE_RATE
from llm_asr.data.mls import MlsItem


def relative_to(path: str | Path, base: Path | None) -> str:
    """`path` relative to `base` when it lies under it (lexically, links not followed), else as is."""
    p = Path(path)
    if base is not None and p.is_absolute() and p.is_relative_to(base):
        return str(p.relative_to(base))
    return str(p)


def load_cuts(path: str | Path, workdir: str | Path) -> CutSet:
    """A CutSet written by prepare-data / extract-features, its relative audio and feature paths
    resolved against `workdir` (absolute ones are kept)."""
    base = Path(workdir).absolute()
    return CutSet.from_cuts(
        c.with_recording_path_prefix(base).with_features_path_prefix(base) for c in CutSet.from_file(path)
    )


def atomic_to_file(manifest, path: Path) -> None:
    """lhotse's to_file through temp names in the same folder + os.replace, so a reader never sees a
    torn manifest (a stage killed while writing). `.gz` files are compressed without a timestamp,
    so equal manifests are equal bytes (DVC hashes, identical reruns)."""
    import gzip
    import os
    import shutil

    path = Path(path)
    gz = path.name.endswith(".gz")
    base = path.name[: -len(".gz")] if gz else path.name
    stem, _, ext = base.partition(".")
    plain = path.with_name(f".{stem}.tmp.{ext}")  # lhotse picks the format from the extension
    packed = path.with_name(f".{stem}.tmp.{ext}.gz")
    try:
        manifest.to_file(plain)
        if gz:
            with open(plain, "rb") as src, open(packed, "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as dst:
                    shutil.copyfileobj(src, dst)
            plain.unlink()
        os.replace(packed if gz else plain, path)
    except BaseException:
        plain.unlink(missing_ok=True)
        packed.unlink(missing_ok=True)
        raise


def relativize_cut(d: dict, workdir: Path) -> dict:
    """A cut dict with its audio sources and feature storage made relative to `workdir`."""
    for src in d.get("recording", {}).get("sources", []):
        if src.get("type") == "file":
            src["source"] = relative_to(src["source"], workdir)
    if d.get("features"):
        d["features"]["storage_path"] = relative_to(d["features"]["storage_path"], workdir)
    return d


def to_lhotse(items: list[MlsItem], base: Path | None = None) -> tuple[RecordingSet, SupervisionSet]:
    """Recordings (audio paths relative to `base` when under it) and supervisions, sorted by id."""
    recordings, supervisions = [], []
    for it in sorted(items, key=lambda x: x.id):
        recordings.append(
            Recording(
                id=it.id,
                sources=[AudioSource(type="file", channels=[0], source=relative_to(it.audio_path, base))],
                sampling_rate=SAMPLE_RATE,
                num_samples=it.num_samples,
                duration=it.num_samples / SAMPLE_RATE,
            )
        )
        supervisions.append(
            SupervisionSegment(
                id=it.id,
                recording_id=it.id,
                start=0.0,
                duration=it.num_samples / SAMPLE_RATE,
                channel=0,
                text=it.text,
                language=it.language,
                speaker=it.speaker,
                gender=it.gender,
            )
        )
    recs, sups = RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions)
    validate_recordings_and_supervisions(recs, sups)
    return recs, sups


def write_manifests(items: list[MlsItem], split: str, out_dir: Path, base: Path | None = None) -> CutSet:
    """Per-language recordings/supervisions + the all-language CutSet for one split (audio paths
    relative to `base`, the workdir, when given)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_lang: dict[str, list[MlsItem]] = defaultdict(list)
    for it in items:
        by_lang[it.language].append(it)
    for language, its in sorted(by_lang.items()):
        recs, sups = to_lhotse(its, base)
        atomic_to_file(recs, out_dir / f"mls-{language}_recordings_{split}.jsonl.gz")
        atomic_to_file(sups, out_dir / f"mls-{language}_supervisions_{split}.jsonl.gz")
    recs, sups = to_lhotse(items, base)
    # one cut per utterance, cut id = utterance id (CutSet.from_manifests would add a suffix)
    cuts = CutSet.from_cuts(
        MonoCut(id=sup.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])
        for rec, sup in zip(recs, sups)
    )
    atomic_to_file(cuts, out_dir / f"cuts_{split}.jsonl.gz")
    return cuts


def summarize(items: list[MlsItem]) -> dict[str, dict[str, float]]:
    """{language: {"utterances": n, "hours": h}} for one split."""
    out: dict[str, dict[str, float]] = {}
    for it in items:
        s = out.setdefault(it.language, {"utterances": 0, "hours": 0.0})
        s["utterances"] += 1
        s["hours"] += it.duration / 3600
    return {k: {"utterances": v["utterances"], "hours": round(v["hours"], 4)} for k, v in sorted(out.items())}
