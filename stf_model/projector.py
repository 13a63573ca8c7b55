"""The multimodal projector of LLaVA-STF: MBTF -> STF -> MLP, in transformers' projector slot."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from stf_model.config import STFConfig
from stf_model.fusion import MultiBlockTokenFusion, SpatialTokenFusion


class STFProjector(nn.Module):
    """Maps the vision tower's selected patch features to LLM embeddings.

    ``linear_1``/``linear_2`` carry the names of transformers' ``LlavaMultiModalProjector``, so with
    one block and window 1 this module is LLaVA-1.5's projector, weight for weight.
    """

    def __init__(
        self,
        mbtf: MultiBlockTokenFusion | None,
        stf: SpatialTokenFusion,
        in_features: int,
        hidden_size: int,
        out_features: int,
        act: str = "gelu",
        bias: bool = True,
    ):
        super().__init__()
        self.mbtf = mbtf
        self.stf = stf
        self.linear_1 = nn.Linear(in_features, hidden_size, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_size, out_features, bias=bias)

    @classmethod
    def from_config(cls, config: STFConfig) -> STFProjector:
        width = config.vision_config.hidden_size
        num_blocks = len(config.feature_layers)
        mbtf = None
        if num_blocks > 1:
            mbtf = MultiBlockTokenFusion(
                width, num_blocks, config.resolved_mbtf_hidden_size, config.projector_hidden_act
            )
        return cls(
            mbtf=mbtf,
            stf=SpatialTokenFusion(config.grid_size, config.stf_window),
            in_features=width * config.stf_window**2,
            hidden_size=config.resolved_projector_hidden_size,
            out_features=config.text_config.hidden_size,
            act=config.projector_hidden_act,
            bias=config.multimodal_projector_bias,
        )

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Args:
            image_features: patch tokens (CLS dropped) of the n selected blocks, concatenated on
                channels in config order.
        Returns:
            vision tokens in the LLM's embedding space.

        Shape: (B, G*G, n*C) -> (B, (G/w)^2, D)
        """
        x = image_features
        if self.mbtf is not None:
            x = self.mbtf(x)  # (B, G*G, n*C) -> (B, G*G, C)
        x = self.stf(x)  # (B, G*G, C) -> (B, (G/w)^2, w*w*C)
        return self.linear_2(self.act(self.linear_1(x)))  # -> (B, (G/w)^2, D)
