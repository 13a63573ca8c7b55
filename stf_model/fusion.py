"""The two token-fusion steps of LLaVA-STF: Multi-Block Token Fusion and Spatial Token Fusion."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class MultiBlockTokenFusion(nn.Module):
    """Fuses, per patch token, the features of several vision blocks into one feature.

    ``Linear(nC -> h), act, Linear(h -> C)``, no norm and no final activation, as published.
    """

    def __init__(
        self, hidden_size: int, num_blocks: int, fusion_hidden_size: int, act: str = "gelu"
    ):
        super().__init__()
        self.fc1 = nn.Linear(num_blocks * hidden_size, fusion_hidden_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(fusion_hidden_size, hidden_size)

    def forward(self, block_features: torch.Tensor) -> torch.Tensor:
        """Args:
            block_features: the blocks' patch tokens concatenated on channels, deepest first.
        Returns:
            one fused feature per patch token.

        Shape: (B, N, n*C) -> (B, N, C)
        """
        return self.fc2(self.act(self.fc1(block_features)))


def spatial_token_fusion(tokens: torch.Tensor, grid_size: int, window: int) -> torch.Tensor:
    """Merges each non-overlapping ``window x window`` patch window into one token.

    Channel order is the published one, ``c * w * w + dy * w + dx`` (channels interleaved, not the
    window's token vectors one after another): the reference code's
    ``view(B,H,W,C).unfold(1,w,w).unfold(2,w,w)`` puts the window axes last. Output tokens are in
    row-major order over the ``(grid/w) x (grid/w)`` window grid.

    Shape: (B, G*G, C) -> (B, (G/w)^2, C*w*w)
    """
    batch, num_tokens, channels = tokens.shape
    if num_tokens != grid_size * grid_size:
        raise ValueError(
            f"spatial token fusion expects {grid_size}x{grid_size}={grid_size * grid_size} tokens, "
            f"got {num_tokens}"
        )
    if grid_size % window:
        raise ValueError(f"grid {grid_size}x{grid_size} is not divisible by window {window}")
    if window == 1:
        return tokens
    cells = grid_size // window
    x = tokens.reshape(batch, cells, window, cells, window, channels)  # (B, Gy, dy, Gx, dx, C)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (B, Gy, Gx, C, dy, dx)
    return x.reshape(batch, cells * cells, channels * window * window)  # (B, (G/w)^2, C*w*w)


class SpatialTokenFusion(nn.Module):
    """Parameter-free module form of :func:`spatial_token_fusion` for a fixed grid and window."""

    def __init__(self, grid_size: int, window: int):
        super().__init__()
        self.grid_size = grid_size
        self.window = window

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Shape: (B, G*G, C) -> (B, (G/w)^2, C*w*w)"""
        return spatial_token_fusion(tokens, self.grid_size, self.window)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, window={self.window}"
