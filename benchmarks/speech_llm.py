"""Stage-two speed ratios, measured side by side in one run: `python benchmarks/speech_llm.py [--quick]`.

Prints (and writes as JSON with --out): decoding real-time factor batched vs per-utterance,
KV cache on vs off, training throughput (audio s/s) and achieved FLOP/s (counted with
torch.utils.flop_counter) vs this machine's measured matmul peak, and LLM input length and
step time vs stride (80..960 ms). The LLM is the default profile's (SmolLM2-135M); the
encoder is the default conformer at random init (speed does not depend on training), trained
with the LLM as in the paper (the default profile's ctc_words freezes it: see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def build(stride_ms: int, projector: str = "linear"):
    from llm_asr.config import load_config
    from llm_asr.models.encoder import CtcModel, build_encoder
    from llm_asr.models.llm import load_llm
    from llm_asr.models.speech_llm_dir import build_speech_llm

    cfg = load_config(overrides=[f"speech_llm.stride_ms={stride_ms}", f"speech_llm.projector={projector}",
                                 "speech_llm.aux_ctc_weight=0", "speech_llm.freeze_encoder=false",
                                 "decoding.ctc_weight=0", "decoding.beam_size=1"])  # linear: no token CTC; greedy ratios
    llm, tok, _ = load_llm(cfg.speech_llm.llm, with_hash=False)
    ctc = CtcModel(build_encoder(cfg.ctc.encoder, cfg.features.num_mel_bins), cfg.ctc.tokenizer.vocab_size + 1)
    torch.manual_seed(0)
    return cfg, build_speech_llm(cfg, ctc, ["<blank>"] * (cfg.ctc.tokenizer.vocab_size + 1), 0, llm, tok), tok


def batch(n: int, seconds: float, words: int = 25):
    frames = int(seconds * 100)
    feats, lens = torch.randn(n, frames, 80), torch.full((n,), frames)
    return feats, lens, [[100 + (i * 7 + j) % 5000 for j in range(words)] for i in range(n)]


def timed(fn, reps: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def decoding(cfg, model, tok, n: int, seconds: float) -> dict:
    from llm_asr.decoding.speech_llm import decode_features

    feats, lens, _ = batch(n, seconds)
    model.eval()
    dcfg = cfg.decoding.model_copy(update={"tokens_per_second": 4.0, "max_repeat_run": 0})
    audio = n * seconds
    run = lambda f, l, cache=True: decode_features(model, tok, f, l, dcfg, 10.0, use_cache=cache)  # noqa: E731
    batched = timed(lambda: run(feats, lens))
    single = timed(lambda: [run(feats[i : i + 1], lens[i : i + 1]) for i in range(n)])
    no_cache = timed(lambda: run(feats, lens, False))
    return {"rtf_batched": batched / audio, "rtf_single": single / audio, "batched_speedup": single / batched,
            "rtf_no_kv_cache": no_cache / audio, "kv_cache_speedup": no_cache / batched}


def train_step(model, n: int, seconds: float, precision: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    feats, lens, targets = batch(n, seconds)
    model.train()
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)

    def step():
        with ctx:
            out = model(feats, lens, targets)
        out["loss"].backward()
        model.zero_grad(set_to_none=True)
        return out

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        out = step()
    t = timed(step)
    flops = counter.get_total_flops()
    return {"step_s": t, "audio_s_per_s": n * seconds / t, "flop_per_step": flops, "flop_s": flops / t,
            "llm_input_len": out["llm_len"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller batches (a few minutes on 2 cores)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    n, sec = (4, 5.0) if args.quick else (16, 5.0)
    torch.set_num_threads(os.cpu_count() or 1)
    res = {"peak_flop_s": {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}}
    cfg, model, tok = build(160)
    res["decoding"] = decoding(cfg, model, tok, n, sec)
    print(json.dumps({"decoding": res["decoding"]}), flush=True)  # each section as soon as it is measured
    res["training"] = {p: train_step(model, n, sec, p) for p in ("fp32", "bf16")}
    for p in ("fp32", "bf16"):
        res["training"][p]["fraction_of_peak"] = res["training"][p]["flop_s"] / res["peak_flop_s"][p]
    print(json.dumps({"peak_flop_s": res["peak_flop_s"], "training": res["training"]}), flush=True)
    res["stride"] = {}
    for stride in (80, 160, 240, 480, 960):
        _, m, _ = build(stride)
        r = train_step(m, n, sec, "bf16")
        res["stride"][stride] = {"llm_input_len": r["llm_input_len"], "step_s": r["step_s"]}
        print(json.dumps({"stride_ms": stride, **res["stride"][stride]}), flush=True)
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
