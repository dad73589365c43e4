"""One trainer for both stages: loop, checkpoints, distributed data parallelism."""

from llm_asr.training.trainer import TrainState, train

__all__ = ["TrainState", "train"]
