"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint with `kfp.Client`.

    python -m pipelines.submit --host https://kubeflow.example.com/pipeline \\
        --namespace team-asr --experiment llm-asr --run-name paper-240ms \\
        --pipeline training --profile paper --set speech_llm.stride_ms=240

`--grid 80,160,240x0,8` sets the ablation grid (strides x LoRA ranks); `--param K=V`
passes any other pipeline parameter (e.g. `num_nodes=4` for training-distributed).
Authentication: `--token` / `$KFP_TOKEN`, or whatever kfp.Client picks up in-cluster.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipelines.ablation import grid
from pipelines.compile import PIPELINES


def parse_grid(text: str) -> list[dict[str, int]]:
    """'80,160x0,8' -> the product of strides and LoRA ranks as ParallelFor items."""
    try:
        strides, ranks = text.split("x")
        return grid([int(s) for s in strides.split(",")], [int(r) for r in ranks.split(",")])
    except ValueError:
        raise SystemExit(f"--grid '{text}' is not STRIDES x RANKS, e.g. 80,160,240x0,8") from None


def arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters from the command line: profile, overrides, grid, any --param K=V."""
    params: dict[str, Any] = {"profile": args.profile, "overrides": list(args.overrides)}
    if args.grid:
        if args.pipeline != "ablation":
            raise SystemExit("--grid applies to the ablation pipeline only")
        params["grid_points"] = parse_grid(args.grid)
    for item in args.param:
        key, _, value = item.partition("=")
        if not key or not _:
            raise SystemExit(f"--param '{item}' is not KEY=VALUE")
        params[key] = yaml.safe_load(value)
    return params


def submit(args: argparse.Namespace) -> str:
    import kfp
    from kfp import compiler

    params = arguments(args)
    package = args.package
    if package is None:  # compile the pipeline as it is in this checkout
        package = Path(tempfile.mkdtemp()) / f"{args.pipeline}.yaml"
        compiler.Compiler().compile(PIPELINES[args.pipeline], str(package))
    client = kfp.Client(host=args.host, namespace=args.namespace, existing_token=args.token or None)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=params, run_name=args.run_name, experiment_name=args.experiment,
        namespace=args.namespace, service_account=args.service_account,
    )
    print(json.dumps({"run_id": result.run_id, "pipeline": args.pipeline, "arguments": params}))
    if args.wait:
        result.wait_for_run_completion(timeout=args.wait)
    return result.run_id


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://HOST/pipeline")
    ap.add_argument("--namespace", default=None, help="Kubeflow profile namespace")
    ap.add_argument("--experiment", default="llm-asr")
    ap.add_argument("--run-name", default=None)
    ap.add_argument("--pipeline", choices=sorted(PIPELINES), default="training")
    ap.add_argument("--package", type=Path, default=None, help="a compiled YAML (default: compile now)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--grid", default="", help="ablation grid STRIDES x RANKS, e.g. 80,160,240x0,8")
    ap.add_argument("--param", action="append", default=[], help="other pipeline parameter KEY=VALUE")
    ap.add_argument("--service-account", default=None)
    ap.add_argument("--token", default=os.environ.get("KFP_TOKEN", ""))
    ap.add_argument("--wait", type=int, default=0, help="wait up to N seconds for the run to finish")
    return ap


def main() -> None:
    submit(parser().parse_args())


if __name__ == "__main__":
    main()
