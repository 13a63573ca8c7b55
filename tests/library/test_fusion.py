"""Spatial and multi-block token fusion against independent implementations."""

import pytest
import torch

from stf_model import MultiBlockTokenFusion, spatial_token_fusion


def loop_stf(tokens: torch.Tensor, grid: int, window: int) -> torch.Tensor:
    """Independent, element-by-element statement of the published order: out[b, cy*G/w + cx,
    c*w*w + dy*w + dx] = in[b, (cy*w + dy)*G + cx*w + dx, c]."""
    batch, _, channels = tokens.shape
    cells = grid // window
    out = torch.empty(batch, cells * cells, channels * window * window, dtype=tokens.dtype)
    for cy in range(cells):
        for cx in range(cells):
            for dy in range(window):
                for dx in range(window):
                    src = (cy * window + dy) * grid + cx * window + dx
                    for c in range(channels):
                        out[:, cy * cells + cx, c * window * window + dy * window + dx] = tokens[
                            :, src, c
                        ]
    return out


def reference_unfold_stf(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """The reference code's 2x2 fusion, verbatim in spirit: view + unfold + reshape."""
    batch, _, channels = tokens.shape
    x = tokens.view(batch, grid, grid, channels).unfold(1, 2, 2).unfold(2, 2, 2)
    return x.reshape(batch, (grid // 2) ** 2, channels * 4)


@pytest.mark.parametrize("grid,window", [(4, 2), (6, 3), (12, 4), (6, 2), (5, 1)])
def test_stf_channel_order_matches_loop(grid, window):
    tokens = torch.randn(2, grid * grid, 3)
    torch.testing.assert_close(
        spatial_token_fusion(tokens, grid, window), loop_stf(tokens, grid, window)
    )


def test_stf_matches_reference_unfold_at_real_grid():
    tokens = torch.randn(2, 576, 8)
    torch.testing.assert_close(
        spatial_token_fusion(tokens, 24, 2), reference_unfold_stf(tokens, 24)
    )


def test_stf_is_a_2x2_stride_2_conv_for_the_first_projector_layer():
    # docs/design.md section 1: Linear(4C -> K) after STF equals Conv2d(C, K, 2, stride 2) with weight W.view(K, C, 2, 2).
    grid, channels, out = 8, 5, 7
    tokens = torch.randn(1, grid * grid, channels)
    weight = torch.randn(out, channels * 4)
    via_stf = spatial_token_fusion(tokens, grid, 2) @ weight.T
    image = tokens.view(1, grid, grid, channels).permute(0, 3, 1, 2)
    via_conv = torch.nn.functional.conv2d(image, weight.view(out, channels, 2, 2), stride=2)
    torch.testing.assert_close(via_stf, via_conv.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("window,expected", [(1, 576), (2, 144), (3, 64), (4, 36)])
def test_stf_token_counts_at_real_grid(window, expected):
    out = spatial_token_fusion(torch.randn(1, 576, 16), 24, window)
    assert out.shape == (1, expected, 16 * window * window)


def test_stf_rejects_wrong_token_count_and_window():
    with pytest.raises(ValueError, match="expects 24x24=576 tokens, got 577"):
        spatial_token_fusion(torch.randn(1, 577, 4), 24, 2)
    with pytest.raises(ValueError, match="not divisible by window 5"):
        spatial_token_fusion(torch.randn(1, 576, 4), 24, 5)


def test_mbtf_is_linear_gelu_linear():
    mbtf = MultiBlockTokenFusion(hidden_size=4, num_blocks=8, fusion_hidden_size=16)
    x = torch.randn(2, 9, 32)
    expected = torch.nn.functional.linear(
        torch.nn.functional.gelu(torch.nn.functional.linear(x, mbtf.fc1.weight, mbtf.fc1.bias)),
        mbtf.fc2.weight,
        mbtf.fc2.bias,
    )
    torch.testing.assert_close(mbtf(x), expected)
    assert mbtf.fc1.weight.shape == (16, 32) and mbtf.fc2.weight.shape == (4, 16)
