"""`llm-asr`: one thin command per stage; each loads the config and calls `stages.<stage>.run`."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from llm_asr.config import Config, ConfigError, load_config
from llm_asr.errors import UserError
from llm_asr.paths import Paths

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err = Console(stderr=True)

ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="profile: default, micro, paper")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override KEY=VALUE (dotted), repeatable")]
WorkdirOpt = Annotated[Optional[Path], typer.Option("--workdir", help="where stages read/write (default: repo root)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint")]


def _load(profile: str | None, sets: list[str] | None, workdir: Path | None) -> tuple[Config, Paths]:
    try:
        cfg = load_config(profile, sets or [])
    except ConfigError as e:
        err.print(f"[red]config error:[/red] {e}")
        raise typer.Exit(2) from None
    return cfg, Paths.at(workdir)


def _check_system(command: str, system: str) -> None:
    """Exit 2 with the known systems when --system names none of them."""
    from llm_asr.inference import SYSTEMS

    if system not in SYSTEMS:
        err.print(f"[red]{command}:[/red] --system must be one of {', '.join(SYSTEMS)}, got '{system}'")
        raise typer.Exit(2)


def _run_stage(stage: str, cfg: Config, paths: Paths, **kwargs: Any) -> Any:
    module = importlib.import_module(f"llm_asr.stages.{stage}")
    try:
        return module.run(cfg, paths, **kwargs)
    except (UserError, ConfigError, FileNotFoundError) as e:
        err.print(f"[red]{stage} failed:[/red] {e}")
        raise typer.Exit(2) from None
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        err.print(f"[red]{stage} failed:[/red] disk full writing {e.filename or 'under ' + str(paths.workdir)} "
                  f"({e.strerror}): free space or use another --workdir; then rerun (training: --resume)")
        raise typer.Exit(2) from None


def _print_result(result: Any) -> None:
    if result is not None:
        typer.echo(json.dumps(result, indent=2, default=str))


@app.command("prepare-data")
def prepare_data(profile: ProfileOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = None) -> None:
    """Build (synthetic) or download (mls) the corpus in MLS layout, then lhotse manifests."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("prepare_data", cfg, paths))


@app.command("prepare-ood")
def prepare_ood(profile: ProfileOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = None) -> None:
    """Out-of-domain test set (Debian handbook sentences, test voices) in MLS layout under data/ood."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("prepare_ood", cfg, paths))


@app.command("extract-features")
def extract_features(profile: ProfileOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = None) -> None:
    """80-d log-mel fbank for every cut, plus global CMVN stats."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("extract_features", cfg, paths))


@app.command("train-ctc")
def train_ctc(
    profile: ProfileOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = None, resume: ResumeOpt = False
) -> None:
    """Stage one: tokenizer + conformer CTC encoder (also the baseline system)."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("train_ctc", cfg, paths, resume=resume))


@app.command("train-speech-llm")
def train_speech_llm(
    profile: ProfileOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = None, resume: ResumeOpt = False
) -> None:
    """Stage two: encoder + frame stacker + projector + LLM (LoRA or frozen)."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("train_speech_llm", cfg, paths, resume=resume))


@app.command("evaluate")
def evaluate(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    workdir: WorkdirOpt = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="any MLS-layout directory (default: the corpus)")] = None,
    model: Annotated[Optional[str], typer.Option(help="model dir or models:/ URI; whisper: a faster-whisper "
                                                      "model dir or id (default: the packaged Whisper base)")] = None,
    system: Annotated[str, typer.Option(help="speech-llm, ctc or whisper (the pretrained peer)")] = "speech-llm",
    split: Annotated[Optional[str], typer.Option(help="train, dev or test")] = None,
    out: Annotated[Optional[Path], typer.Option(help="where to write the metrics JSON")] = None,
) -> None:
    """Per-language WER/CER of a model on an MLS-layout directory."""
    _check_system("evaluate", system)
    cfg, paths = _load(profile, set_, workdir)
    result = _run_stage(
        "evaluate", cfg, paths, data_dir=data_dir, model=model, system=system, split=split, out=out
    )
    _print_result(result)


@app.command("report")
def report(profile: ProfileOpt = None, set_: SetOpt = None, workdir: WorkdirOpt = None) -> None:
    """Merge both systems' metrics into reports/metrics.json and a results table."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("report", cfg, paths))


@app.command("register")
def register(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    workdir: WorkdirOpt = None,
    model: Annotated[Optional[Path], typer.Option(help="evaluated model dir")] = None,
) -> None:
    """Register the speech-LLM in MLflow; move `champion` only if it beats the current one."""
    cfg, paths = _load(profile, set_, workdir)
    _print_result(_run_stage("register", cfg, paths, model=model))


@app.command("transcribe")
def transcribe(
    audio: Annotated[list[Path], typer.Argument(help="audio files (any length)")],
    model: Annotated[Optional[str], typer.Option(help="model dir or models:/ URI")] = None,
    system: Annotated[Optional[str], typer.Option(
        help="whisper for the Whisper peer system; default: speech-llm or ctc, read from the model dir")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Print one JSON line per file: {"audio": path, "text": ...} (or "error"; exit status 2 if any)."""
    cfg, paths = _load(profile, set_, workdir)
    from llm_asr import inference

    if system is not None:
        _check_system("transcribe", system)
    failed = 0
    try:
        for line in inference.transcribe_files(cfg, paths, [str(a) for a in audio], model=model, system=system):
            sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
            failed += "error" in line
    except (UserError, FileNotFoundError) as e:
        err.print(f"[red]transcribe failed:[/red] {e}")
        raise typer.Exit(2) from None
    if failed:
        err.print(f"[red]{failed} of {len(audio)} files could not be read[/red] (see their \"error\" lines)")
        raise typer.Exit(2)


@app.command("compare")
def compare(
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    workdir: WorkdirOpt = None,
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default: tracking.experiment)")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="filter runs by tag KEY=VALUE, repeatable")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(help="where to write the table and plots")] = None,
) -> None:
    """The ablation table (stride x LoRA rank) and plots, from MLflow runs."""
    cfg, paths = _load(profile, set_, workdir)
    from llm_asr import compare as compare_mod

    try:
        result = compare_mod.run(cfg, paths, experiment=experiment, tags=tag or [], out_dir=out_dir)
    except UserError as e:
        err.print(f"[red]compare failed:[/red] {e}")
        raise typer.Exit(2) from None
    _print_result(result)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
