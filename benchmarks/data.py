"""Data-stage speed, as multiples of real time (audio seconds per wall-clock second), in one run.

Run: `.venv/bin/python benchmarks/data.py [--per-language N] [--workers W]`
Synthesizes N utterances per language for all 8 languages with the default profile's
voices (espeak-ng + 22.05->16 kHz resampling + FLAC, in a process pool), then extracts
fbank features for them with the extract-features code path (lhotse storage included).
Sentence lists come from the cache (built first, not timed). Targets on 2 cores:
synthesis >= 300x, features >= 1000x real time.

Two numbers per step: wall clock (what you get on this machine now) and CPU time
(audio seconds per CPU second x workers: what W idle cores give; the same as wall clock
on an idle machine, and robust when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from llm_asr.config import load_config
from llm_asr.data.manifests import write_manifests
from llm_asr.data.mls import read_mls_dir
from llm_asr.data.parallel import num_workers, process_pool
from llm_asr.data.synthetic import build_synthetic_corpus
from llm_asr.data.text import sentences_for_all
from llm_asr.paths import Paths
from llm_asr.stages.extract_features import extract_split


def line(step: str, audio: float, wall: float, workers: int, what: str) -> str:
    # wall clock only: the pool's workers are children of the forkserver, not of this process,
    # so getrusage(RUSAGE_CHILDREN) cannot count their CPU time
    return f"{step:<10} {audio / wall:7.1f}x real time (wall, {workers} workers)  [{what}, {audio:.0f} s audio, {wall:.1f} s]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-language", type=int, default=60, help="train utterances per language")
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    args = ap.parse_args()
    n = args.per_language
    load = os.getloadavg()[0]
    cfg = load_config(
        None,
        [
            f"data.synthetic.train_per_language={n}",
            "data.synthetic.dev_per_language=1",
            "data.synthetic.test_per_language=1",
            f"data.num_workers={args.workers}",
            f"features.num_workers={args.workers}",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.at(tmp)
        workers = num_workers(args.workers)
        sentences_for_all(cfg.data.languages, paths.cache, workers)  # warm the cache, untimed

        t0 = time.perf_counter()
        facts = build_synthetic_corpus(cfg, paths.corpus, paths.cache)
        synth_wall = time.perf_counter() - t0
        items, _ = read_mls_dir(paths.corpus, "train", cfg.data.languages, args.workers)
        write_manifests(items, "train", paths.manifests)

        t0 = time.perf_counter()
        pool = process_pool(workers)
        cuts, _, feat_seconds, _skipped = extract_split(cfg, paths, "train", pool)
        pool.close()
        pool.join()
        feat_wall = time.perf_counter() - t0

    audio = facts["audio_seconds"]
    print(f"load average at start: {load:.1f} (other jobs on these cores lower the wall-clock numbers)")
    print(line("synthesis", audio, synth_wall, workers, f"{facts['utterances']} utterances"))
    print(line("features", feat_seconds, feat_wall, workers, f"{cuts} cuts"))


if __name__ == "__main__":
    main()
