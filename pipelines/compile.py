"""Compile the training and ablation pipelines to KFP IR YAML: `python -m pipelines.compile --out build`."""

import argparse
from pathlib import Path

from kfp import compiler

from pipelines.ablation import ablation_pipeline
from pipelines.training import training_distributed_pipeline, training_pipeline

PIPELINES = {
    "training": training_pipeline,
    "training-distributed": training_distributed_pipeline,
    "ablation": ablation_pipeline,
}


def compile_all(out: Path) -> dict[str, Path]:
    """Write `<out>/<name>.yaml` for every pipeline; returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, pipeline in PIPELINES.items():
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
        written[name] = path
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("build"))
    args = ap.parse_args()
    for name, path in compile_all(args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
