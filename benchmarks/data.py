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
import resource
import tempfile
import time
from multiprocessing import get_context

from llm_asr.config import load_config
from llm_asr.data.manifests import write_manifests
from llm_asr.data.mls import read_mls_dir
from llm_asr.data.synthetic import build_synthetic_corpus, num_workers
from llm_asr.data.text import sentences_for_all
from llm_asr.paths import Paths
from llm_asr.stages.extract_features import extract_split


def cpu_seconds() -> float:
    """CPU time of this process and of every finished child (pool workers, espeak-ng)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def line(step: str, audio: float, wall: float, cpu: float, workers: int, what: str) -> str:
    return (
        f"{step:<10} {audio / wall:7.1f}x real time (wall), {audio / cpu * workers:7.1f}x "
        f"(CPU time, {workers} cores)  [{what}, {audio:.0f} s audio, {wall:.1f} s wall, {cpu:.1f} s CPU]"
    )


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

        t0, c0 = time.perf_counter(), cpu_seconds()
        facts = build_synthetic_corpus(cfg, paths.corpus, paths.cache)
        synth_wall, synth_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        items, _ = read_mls_dir(paths.corpus, "train", cfg.data.languages, args.workers)
        write_manifests(items, "train", paths.manifests)

        t0, c0 = time.perf_counter(), cpu_seconds()
        pool = get_context("fork").Pool(workers)
        cuts, _, feat_seconds = extract_split(cfg, paths, "train", pool)
        pool.close()
        pool.join()  # reap the workers so their CPU time is counted
        feat_wall, feat_cpu = time.perf_counter() - t0, cpu_seconds() - c0

    audio = facts["audio_seconds"]
    print(f"load average at start: {load:.1f} (other jobs on these cores lower the wall-clock numbers)")
    print(line("synthesis", audio, synth_wall, synth_cpu, workers, f"{facts['utterances']} utterances"))
    print(line("features", feat_seconds, feat_wall, feat_cpu, workers, f"{cuts} cuts"))


if __name__ == "__main__":
    main()
