"""FrameStacker: shapes, strides, lengths and content for many input lengths."""

import pytest
import torch

from llm_asr.models.stacker import FrameStacker


@pytest.mark.parametrize("stride_ms", [40, 80, 160, 240, 480, 960])
@pytest.mark.parametrize("t", [1, 5, 23, 24, 97])
def test_shapes_and_lengths(stride_ms: int, t: int) -> None:
    stacker = FrameStacker(stride_ms)
    n = stride_ms // 40
    lens = torch.tensor([t, max(1, t // 2), max(1, t - 3)])
    x = torch.randn(3, t, 6)
    y, out_lens = stacker(x, lens)
    assert y.shape == (3, -(-t // n), 6 * n)
    assert stacker.output_dim(6) == 6 * n
    assert out_lens.tolist() == [-(-int(v) // n) for v in lens]
    # a stacked frame is non-zero exactly when it holds at least one real input frame
    nonzero = (y.abs().sum(-1) > 0).sum(1)
    assert nonzero.tolist() == out_lens.tolist()


def test_content_is_consecutive_frames() -> None:
    stacker = FrameStacker(120)  # n = 3
    x = torch.arange(2 * 7 * 2, dtype=torch.float).reshape(2, 7, 2)
    y, lens = stacker(x, torch.tensor([7, 4]))
    assert torch.equal(y[0, 1], torch.cat([x[0, 3], x[0, 4], x[0, 5]]))
    assert torch.equal(y[0, 2], torch.cat([x[0, 6], torch.zeros(4)]))  # tail zero-padded
    assert torch.equal(y[1, 1], torch.cat([x[1, 3], torch.zeros(4)]))  # padding beyond length zeroed
    assert lens.tolist() == [3, 2]


@pytest.mark.parametrize("bad", [0, 20, 100])
def test_rejects_strides_off_the_frame_grid(bad: int) -> None:
    with pytest.raises(ValueError):
        FrameStacker(bad)
