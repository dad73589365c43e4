"""The one training loop both stages use: `train(task, train_cuts, valid_cuts, tcfg, out_dir)`.

A *task* is any object with (duck-typed; only the first three are required):

    model: nn.Module                      the module to train (moved to the device here)
    collate(cuts: CutSet) -> batch        tensors (or dict/tuple/list of them) on CPU;
                                          the trainer moves them to the device
    collate_valid(cuts) -> batch          optional: validation batches (e.g. without speed
                                          perturbation); default: collate
    loss(model, batch) -> (loss, stats)   scalar loss tensor (mean over the batch) and a
                                          dict of floats to log (averaged over log_every)
    param_groups(model) -> list[dict]     AdamW groups; a group may set "lr" (absolute) and
                                          "weight_decay". Must include parameters that
                                          on_step unfreezes later. Default: every trainable
                                          parameter at tcfg.lr, no decay on biases/norms.
    on_step(step, model) -> None          called before optimizer step `step` (0-based);
                                          must depend only on `step` (resume calls it too),
                                          e.g. unfreeze LoRA when step >= warmup.
    validate(model, batches) -> dict      extra validation metrics (model in eval mode,
                                          no_grad, autocast active), e.g. WER or the
                                          matched-vs-shuffled-audio listening check.
    select_metric: str                    validation key for the best checkpoint, lower is
                                          better (default "loss"; e.g. "wer").
    checkpoint_state(model) -> dict       what to save of the model (default: full
    load_checkpoint_state(model, state)   state_dict, strict load); e.g. only trainable
                                          weights when a big LLM is frozen.

Throughput is audio seconds per second, taken from the cuts' durations.

Behaviour: AdamW + linear warmup + cosine decay, gradient clipping, gradient
accumulation (tcfg.grad_accum batches per step), duration-bucketed batches, bf16 autocast
(tcfg.precision: auto measures fp32 vs bf16 on CPU), validation every tcfg.valid_every
steps with the best weights in `out_dir/best.pt`, an atomic `out_dir/checkpoint.pt`
every tcfg.checkpoint_every steps, at the time budget (tcfg.max_minutes wall /
tcfg.max_cpu_minutes CPU-equivalent), at the end, and on SIGTERM (then exit status 143).
`resume=True` restores model, optimizer, scheduler, sampler position and every rank's RNG
states, so a killed and resumed run ends with the same weights as an uninterrupted one.
Under torchrun (WORLD_SIZE > 1) each rank takes every world_size-th batch and gradients
are averaged (see distributed.py). Metrics go to the active MLflow run; curves to
`out_dir/curves.json` and `out_dir/curves.png`. On return the model holds the best weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet
from tqdm import tqdm

from llm_asr.config import TrainConfig
from llm_asr.data.batching import cuts_duration, make_eval_sampler, make_sampler
from llm_asr.training import distributed as D
from llm_asr.training.checkpoint import (
    atomic_save,
    load_checkpoint,
    load_state_strict,
    rng_state,
    seed_everything,
    set_rng_state,
)
from llm_asr.training.curves import write_curves
from llm_asr.training.optim import autocast, default_param_groups, measure_bf16_speedup, resolve_precision
from llm_asr.training.optim import warmup_cosine

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    cpu_equiv_s: float = 0.0  # process CPU seconds / torch threads
    precision: str = ""
    bf16_speedup: float = 0.0
    best_metric: float = float("inf")
    best_step: int = -1
    curves: list[dict[str, float]] = dataclasses.field(default_factory=list)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _cut_batches(sampler: Any):
    """Endless stream of CutSets over epochs; a restored sampler continues mid-epoch."""
    while True:
        for cuts in sampler:
            yield cuts
        sampler.set_epoch(sampler.epoch + 1)


def _model_state(task: Any, model: torch.nn.Module) -> dict[str, Any]:
    if hasattr(task, "checkpoint_state"):
        return task.checkpoint_state(model)
    return model.state_dict()


def _load_model_state(task: Any, model: torch.nn.Module, state: dict[str, Any]) -> None:
    if hasattr(task, "load_checkpoint_state"):
        task.load_checkpoint_state(model, state)
    else:
        load_state_strict(model, state)


class _SignalFlag:
    """Records SIGTERM instead of dying mid-step; the loop then checkpoints and exits (status 143)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None


class _Loop:
    def __init__(self, task: Any, train_cuts: CutSet, valid_cuts: CutSet, tcfg: TrainConfig, out_dir: Path,
                 seed: int, info: D.DistInfo):
        self.task, self.tcfg, self.out_dir, self.info = task, tcfg, Path(out_dir), info
        self.model: torch.nn.Module = task.model
        self.device = torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        D.broadcast_params(self.model, info)
        groups = task.param_groups(self.model) if hasattr(task, "param_groups") else None
        groups = groups or default_param_groups(self.model, tcfg.weight_decay)
        self.params = [p for g in groups for p in g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        self.lr_factor = warmup_cosine(tcfg.warmup_steps, tcfg.max_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_factor)
        self.sampler = make_sampler(train_cuts, max_duration_s=tcfg.max_duration_s, num_buckets=tcfg.num_buckets,
                                    shuffle=True, seed=seed, world_size=info.world_size, rank=info.rank)
        self.valid_cuts = valid_cuts
        self.state = TrainState()
        self.select = getattr(task, "select_metric", "loss")
        self.ckpt_path, self.best_path = self.out_dir / "checkpoint.pt", self.out_dir / "best.pt"
        seed_everything(seed + info.rank)  # per-rank dropout / augmentation streams

    # ---- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        rngs = D.gather_objects(rng_state(), self.info)
        if self.info.is_main:
            atomic_save({
                "model": _model_state(self.task, self.model),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "sampler": self.sampler.state_dict(),
                "rng": rngs,
                "state": dataclasses.asdict(self.state),
            }, self.ckpt_path)
        D.barrier(self.info)

    def restore(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        ck = load_checkpoint(self.ckpt_path)
        if len(ck["rng"]) != self.info.world_size:
            raise RuntimeError(f"checkpoint was written by {len(ck['rng'])} processes, now {self.info.world_size}")
        _load_model_state(self.task, self.model, ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.sampler.load_state_dict(ck["sampler"])
        self.state = TrainState(**ck["state"])
        set_rng_state(ck["rng"][self.info.rank])
        return True

    # ---- one optimizer step ------------------------------------------------------------
    def step(self, stream) -> tuple[dict[str, float], float, float]:
        """Returns (averaged stats incl. loss, audio seconds seen, grad norm)."""
        self.model.train()
        if hasattr(self.task, "on_step"):
            self.task.on_step(self.state.step, self.model)
        totals: dict[str, float] = {}
        audio_s = 0.0
        accum = self.tcfg.grad_accum
        for _ in range(accum):
            cuts = next(stream)
            audio_s += cuts_duration(cuts)
            batch = to_device(self.task.collate(cuts), self.device)
            with autocast(self.state.precision, self.device):
                loss, stats = self.task.loss(self.model, batch)
            (loss / accum).backward()
            for k, v in {"loss": float(loss.detach()), **stats}.items():
                totals[k] = totals.get(k, 0.0) + float(v) / accum
        D.all_reduce_grads([p for p in self.params if p.requires_grad], self.info)
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.tcfg.grad_clip))
        if torch.isfinite(torch.tensor(norm)):
            self.opt.step()
        else:
            totals["skipped"] = 1.0  # non-finite gradient: identical decision on every rank
        self.opt.zero_grad(set_to_none=True)
        if self.tcfg.decay_by_time:
            frac = D.all_reduce_mean(self.budget_fraction(), self.info)
            self.sched.lr_lambdas[0].time_fraction = min(1.0, frac)
        self.sched.step()
        self.state.step += 1
        return totals, audio_s, norm

    # ---- validation --------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        saved_rng = rng_state()  # validation must not shift the training random streams
        self.model.eval()
        cut_batches = list(make_eval_sampler(self.valid_cuts, self.tcfg.max_duration_s))
        collate = getattr(self.task, "collate_valid", self.task.collate)
        batches = [to_device(collate(c), self.device) for c in cut_batches]
        total, n = 0.0, 0
        with torch.no_grad(), autocast(self.state.precision, self.device):
            for b, cuts in zip(batches, cut_batches):
                loss, _ = self.task.loss(self.model, b)
                total, n = total + float(loss) * len(cuts), n + len(cuts)
            metrics = {"loss": total / max(n, 1)}
            if hasattr(self.task, "validate"):
                metrics.update({k: float(v) for k, v in self.task.validate(self.model, batches).items()})
        set_rng_state(saved_rng)
        return metrics

    def probe_precision(self, stream) -> None:
        """Time fp32 vs bf16 on one real batch; restore weights, grads and RNG afterwards."""
        cuts = next(iter(make_eval_sampler(self.valid_cuts, self.tcfg.max_duration_s)), None)
        if cuts is None:
            self.state.precision = "fp32"
            return
        batch = to_device(self.task.collate(cuts), self.device)
        saved_rng, saved_w = rng_state(), copy.deepcopy(self.model.state_dict())

        def one(precision: str) -> None:
            self.model.train()
            with autocast(precision, self.device):
                loss, _ = self.task.loss(self.model, batch)
            loss.backward()
            self.model.zero_grad(set_to_none=True)

        probe = (lambda: measure_bf16_speedup(one)) if self.info.is_main else None
        precision, speedup = resolve_precision(self.tcfg.precision, self.device, probe)
        flags = D.gather_objects((precision, speedup), self.info)
        self.state.precision, self.state.bf16_speedup = flags[0]  # rank 0 decides for all
        self.model.load_state_dict(saved_w)
        set_rng_state(saved_rng)

    # ---- the loop ----------------------------------------------------------------------
    def run(self, resume: bool) -> dict[str, Any]:
        resumed = resume and self.restore()
        if resume and not resumed and self.info.is_main:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out_dir)
        stream = _cut_batches(self.sampler)
        if not self.state.precision:
            self.probe_precision(stream)
        tcfg, st = self.tcfg, self.state
        bar = tqdm(total=tcfg.max_steps, initial=st.step, disable=not self.info.is_main, desc="train",
                   dynamic_ncols=True)
        window: dict[str, float] = {}
        win_steps, win_audio, win_t0 = 0, 0.0, time.perf_counter()
        stopped_by = "max_steps"
        signals = _SignalFlag()
        while st.step < tcfg.max_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            stats, audio_s, norm = self.step(stream)
            self._tick(t0, c0)
            t0, c0 = time.perf_counter(), time.process_time()
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + v
            win_steps, win_audio = win_steps + 1, win_audio + audio_s * self.info.world_size
            bar.update(1)
            if st.step % tcfg.log_every == 0 or st.step == tcfg.max_steps:
                rate = win_audio / max(time.perf_counter() - win_t0, 1e-9)
                row = {f"train_{k}": D.all_reduce_mean(v / win_steps, self.info) for k, v in sorted(window.items())}
                row.update(lr=self.sched.get_last_lr()[0], audio_s_per_s=rate, grad_norm=norm)
                self._log(row, bar)
                window, win_steps, win_audio, win_t0 = {}, 0, 0.0, time.perf_counter()
            if D.any_rank(signals.received is not None, self.info):
                self.save()  # SIGTERM (preemption, a kill): keep the progress, then exit
                signals.restore()
                bar.close()
                raise SystemExit(128 + (signals.received or signal.SIGTERM))
            capped = D.any_rank(self.budget_fraction() >= 1.0, self.info)
            last = capped or st.step == tcfg.max_steps
            if st.step % tcfg.valid_every == 0 or last:
                self._validate_and_select()
            self._tick(t0, c0)  # validation time counts toward the budget
            if st.step % tcfg.checkpoint_every == 0 or last:
                self.save()
            if capped:
                stopped_by = "time_budget"
                break
        signals.restore()
        bar.close()
        return self._finish(stopped_by, resumed)

    def _tick(self, t0: float, c0: float) -> None:
        self.state.elapsed_s += time.perf_counter() - t0
        self.state.cpu_equiv_s += (time.process_time() - c0) / max(1, torch.get_num_threads())

    def budget_fraction(self) -> float:
        """How much of the time budget is used: the larger of wall and CPU-equivalent (0 = no budget)."""
        t, st = self.tcfg, self.state
        wall = st.elapsed_s / (60 * t.max_minutes) if t.max_minutes > 0 else 0.0
        cpu = st.cpu_equiv_s / (60 * t.max_cpu_minutes) if t.max_cpu_minutes > 0 else 0.0
        return max(wall, cpu)

    def _log(self, row: dict[str, float], bar: tqdm | None = None) -> None:
        st = self.state
        st.curves.append({"step": st.step, "minutes": st.elapsed_s / 60, "cpu_minutes": st.cpu_equiv_s / 60, **row})
        if not self.info.is_main:
            return
        if bar is not None:
            bar.set_postfix(loss=f"{row.get('train_loss', 0):.3f}", lr=f"{row['lr']:.2e}",
                            audio_s_s=f"{row['audio_s_per_s']:.0f}")
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics({k: float(v) for k, v in row.items()}, step=st.step)

    def _validate_and_select(self) -> None:
        st = self.state
        metrics = self.validate() if self.info.is_main else {}
        metrics = D.gather_objects(metrics, self.info)[0]
        row = {f"valid_{k}": v for k, v in metrics.items()}
        self._log(row)
        value = metrics.get(self.select, metrics["loss"])
        if value < st.best_metric:
            st.best_metric, st.best_step = value, st.step
            if self.info.is_main:
                atomic_save({"model": _model_state(self.task, self.model), "step": st.step, "metrics": metrics},
                            self.best_path)
        if self.info.is_main:
            log.info("step %d valid %s", st.step, json.dumps(metrics))
            write_curves(st.curves, self.out_dir)

    def _finish(self, stopped_by: str, resumed: bool) -> dict[str, Any]:
        st = self.state
        D.barrier(self.info)
        if self.best_path.exists():
            _load_model_state(self.task, self.model, load_checkpoint(self.best_path)["model"])
        if self.info.is_main:
            write_curves(st.curves, self.out_dir)
        train_rows = [r for r in st.curves if "train_loss" in r]
        return {
            "steps": st.step,
            "train_minutes": round(st.elapsed_s / 60, 2),
            "train_cpu_equiv_minutes": round(st.cpu_equiv_s / 60, 2),
            "stopped_by": stopped_by,
            "resumed": resumed,
            "precision": st.precision,
            "bf16_speedup": round(st.bf16_speedup, 2),
            "final_train_loss": train_rows[-1]["train_loss"] if train_rows else None,
            f"best_valid_{self.select}": st.best_metric,
            "best_step": st.best_step,
            "world_size": self.info.world_size,
        }


def train(
    task: Any,
    train_cuts: CutSet,
    valid_cuts: CutSet,
    tcfg: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    seed: int = 0,
    dist_info: D.DistInfo | None = None,
) -> dict[str, Any]:
    """Train `task.model` (see the module docstring); returns a summary dict (steps, minutes,
    precision, best validation metric, ...). Log to MLflow by calling it inside a stage_run."""
    info = dist_info or D.init_from_env()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    loop = _Loop(task, train_cuts, valid_cuts, tcfg, Path(out_dir), seed, info)
    return loop.run(resume)
