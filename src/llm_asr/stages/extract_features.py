"""Stage: 80-d log-mel features for every cut (lhotse feature storage) and global CMVN stats.

Run: `llm-asr extract-features [--profile P] [--set KEY=VALUE] [--workdir DIR]`
Reads `data/manifests/cuts_<split>.jsonl.gz`; writes `data/features/cuts_<split>.jsonl.gz`
(the same cuts with features attached, arrays under `data/features/storage/<split>/`; paths
relative to the workdir, read them with `llm_asr.data.manifests.load_cuts`)
and `data/features/cmvn.json` ({"mean": [...], "std": [...]} over the train split; for
features.kind=whisper the identity, mean 0 and std 1: Whisper's log-mel carries its own fixed
normalisation, which the pretrained encoder expects unchanged). A cut whose
audio can no longer be read is skipped and listed in `data/features/skipped.json`.
"""

from __future__ import annotations

import json
import shutil
import time

from llm_asr import tracking
from llm_asr.config import Config, FeaturesConfig
from llm_asr.errors import UserError
from llm_asr.features import FbankExtractor, RunningStats, WhisperMelExtractor, identity_cmvn, save_cmvn
from llm_asr.paths import Paths

SPLITS = ("train", "dev", "test")
CHUNK = 32  # cuts per worker task


class _Counting:
    """Mixin for an extractor that also accumulates CMVN stats of what it extracts (no re-read from disk)."""

    def __init__(self, fcfg: FeaturesConfig) -> None:
        super().__init__(FbankExtractor.from_features_config(fcfg).config)
        self.stats = RunningStats(fcfg.num_mel_bins)

    def extract(self, samples, sampling_rate: int):
        feats = super().extract(samples, sampling_rate)
        self.stats.update(feats)
        return feats


class _CountingFbank(_Counting, FbankExtractor):
    pass


class _CountingWhisperMel(_Counting, WhisperMelExtractor):
    pass


_COUNTING = {"fbank": _CountingFbank, "whisper": _CountingWhisperMel}  # by features.kind


def _extract_chunk(args: tuple[list[dict], str, dict]) -> tuple[list[dict], RunningStats, float, list[dict]]:
    """Worker: compute + store features for a chunk of cuts; returns cuts, stats, audio seconds and
    the cuts whose audio could not be read (changed since prepare-data validated it), with reasons."""
    import torch
    from lhotse import MonoCut, NumpyFilesWriter
    from lhotse.audio.utils import AudioLoadingError

    class KeyedWriter(NumpyFilesWriter):
        """Stores each array under its cut id (lhotse would pick a random uuid), so a rerun writes
        the same files: byte-identical features, stable DVC hashes."""

        key = ""

        def write(self, key: str, value):
            return super().write(self.key or key, value)

    torch.set_num_threads(1)
    cut_dicts, storage_dir, fcfg = args
    fcfg = FeaturesConfig(**fcfg)
    extractor = _COUNTING[fcfg.kind](fcfg)
    out, seconds, skipped = [], 0.0, []
    with KeyedWriter(storage_dir) as storage:
        for d in cut_dicts:
            storage.key = d["id"]
            try:
                cut = MonoCut.from_dict(d).compute_and_store_features(extractor, storage)
            except (AudioLoadingError, OSError, RuntimeError, ValueError, UserError) as e:
                skipped.append({"id": d["id"], "reason": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            seconds += cut.duration
            out.append(cut.to_dict())
    return out, extractor.stats, seconds, skipped


def extract_split(cfg: Config, paths: Paths, split: str, pool) -> tuple[int, RunningStats, float, list[dict]]:
    from lhotse import CutSet
    from tqdm.auto import tqdm

    from llm_asr.data.manifests import atomic_to_file, load_cuts, relativize_cut

    src = paths.manifests / f"cuts_{split}.jsonl.gz"
    if not src.is_file():
        raise UserError(f"no manifest {src}: run `llm-asr prepare-data` first")
    cuts = [c.to_dict() for c in load_cuts(src, paths.workdir)]
    storage = paths.features / "storage" / split
    fcfg = cfg.features.model_dump()
    jobs = [(cuts[i : i + CHUNK], str(storage), fcfg) for i in range(0, len(cuts), CHUNK)]
    done: list[dict] = []
    skipped: list[dict] = []
    stats = RunningStats(cfg.features.num_mel_bins)
    seconds = 0.0
    with tqdm(total=len(cuts), desc=f"{cfg.features.kind} {split}", unit="cut") as bar:
        for out, st, sec, sk in pool.imap(_extract_chunk, jobs):  # ordered: output follows the manifest
            done += [relativize_cut(d, paths.workdir) for d in out]
            skipped += [{**s, "split": split} for s in sk]
            stats.merge(st)
            seconds += sec
            bar.update(len(out) + len(sk))
    if cuts and not done:
        reason = skipped[0]["reason"]
        raise UserError(f"{src}: no cut could be read ({reason}); run `llm-asr prepare-data` again")
    atomic_to_file(CutSet.from_dicts(done), paths.features / f"cuts_{split}.jsonl.gz")
    return len(done), stats, seconds, skipped


def run(cfg: Config, paths: Paths) -> dict:
    """Features for train/dev/test + cmvn.json; returns counts, CMVN frames and speed."""
    from llm_asr.data.parallel import num_workers, process_pool

    with tracking.stage_run(cfg, paths, "extract_features"):
        import mlflow

        shutil.rmtree(paths.features, ignore_errors=True)
        paths.features.mkdir(parents=True)
        result: dict = {"cuts": {}, "skipped": []}
        t0 = time.time()
        total_seconds = 0.0
        workers = num_workers(cfg.features.num_workers)
        with process_pool(workers) as pool:
            for split in SPLITS:
                n, stats, seconds, skipped = extract_split(cfg, paths, split, pool)
                result["cuts"][split] = n
                result["skipped"] += skipped
                total_seconds += seconds
                if split == "train":
                    mean, std = stats.mean_std()  # also refuses an empty train split, for either kind
                    if cfg.features.kind == "whisper":
                        mean, std = identity_cmvn(cfg.features.num_mel_bins)
                    save_cmvn(paths.features / "cmvn.json", mean, std, stats.n)
                    result["cmvn_frames"] = stats.n
        wall = time.time() - t0
        result["audio_hours"] = round(total_seconds / 3600, 4)
        result["real_time_factor"] = round(total_seconds / max(wall, 1e-9), 1)  # x real time
        result["workers"] = workers
        for k, v in (("audio_hours", result["audio_hours"]), ("x_real_time", result["real_time_factor"])):
            mlflow.log_metric(k, v)
        for split, n in result["cuts"].items():
            mlflow.log_metric(f"{split}_cuts", n)
        mlflow.log_metric("skipped", len(result["skipped"]))
        if result["skipped"]:
            (paths.features / "skipped.json").write_text(json.dumps(result["skipped"], indent=1) + "\n")
    return result
