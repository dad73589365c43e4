"""pipelines/submit.py: the parameters it sends are exactly ones the compiled pipelines declare."""

import pytest
import yaml

from pipelines.compile import compile_all
from pipelines.submit import arguments, parse_grid, parser

BASE = ["--host", "http://kfp.invalid"]


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> dict[str, set[str]]:
    out = {}
    for name, path in compile_all(tmp_path_factory.mktemp("build")).items():
        spec = next(yaml.safe_load_all(path.read_text()))
        out[name] = set(spec["root"]["inputDefinitions"]["parameters"])
    return out


def test_grid_is_the_product_of_strides_and_ranks():
    assert parse_grid("80,240x0,8") == [
        {"stride_ms": 80, "lora_rank": 0}, {"stride_ms": 80, "lora_rank": 8},
        {"stride_ms": 240, "lora_rank": 0}, {"stride_ms": 240, "lora_rank": 8},
    ]
    with pytest.raises(SystemExit, match="STRIDES x RANKS"):
        parse_grid("80,240")


@pytest.mark.parametrize(
    "argv,pipeline",
    [
        (["--profile", "paper", "--set", "speech_llm.stride_ms=240"], "training"),
        (["--pipeline", "ablation", "--grid", "80,160x0,8", "--set", "ctc.train.max_steps=10"], "ablation"),
        (["--pipeline", "training-distributed", "--param", "num_nodes=4", "--param", "gpus_per_node=8"],
         "training-distributed"),
    ],
)
def test_submitted_arguments_are_declared_pipeline_parameters(declared, argv, pipeline):
    params = arguments(parser().parse_args(BASE + argv))
    assert set(params) <= declared[pipeline]
    assert isinstance(params["overrides"], list)


def test_typed_params_and_misuse():
    params = arguments(parser().parse_args(BASE + ["--pipeline", "training-distributed", "--param", "num_nodes=4"]))
    assert params["num_nodes"] == 4
    with pytest.raises(SystemExit, match="ablation pipeline only"):
        arguments(parser().parse_args(BASE + ["--grid", "80x0"]))
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        arguments(parser().parse_args(BASE + ["--param", "num_nodes"]))
