"""LLaVA-STF on transformers' LLaVA: same vision tower, LLM, placeholder merge and ``generate``;
the multimodal projector is :class:`~stf_model.projector.STFProjector`."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Literal

import torch
from transformers import (
    AutoModel,
    AutoModelForImageTextToText,
    LlavaForConditionalGeneration,
    LlavaModel,
)
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel

from stf_model.config import STFConfig
from stf_model.errors import ModelInputError
from stf_model.processing import normalize_pixels
from stf_model.projector import STFProjector

logger = logging.getLogger(__name__)

Stage = Literal["pretrain", "finetune"]
Part = Literal["projector", "llm", "vision_tower"]


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``{"trainable", "frozen"}`` parameters of ``model``; a 4-bit weight (bitsandbytes) counts
    by its shape, not by the bytes that pack it."""
    counts = {"trainable": 0, "frozen": 0}
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        count = quant_state.shape.numel() if quant_state is not None else param.numel()
        counts["trainable" if param.requires_grad else "frozen"] += count
    return counts


class STFModel(LlavaModel):
    """LlavaModel whose projector fuses blocks and spatial windows; accepts uint8 pixels."""

    config_class = STFConfig
    config: STFConfig

    def __init__(self, config: STFConfig):
        # Not LlavaModel.__init__: it would first build (and allocate) LLaVA's own projector.
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = STFProjector.from_config(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        """As :meth:`LlavaModel.get_image_features`; uint8 pixels are normalised here, on the
        device the model lives on, so loaders can ship 4x smaller uint8 batches.

        Shape: pixel_values (B, 3, H, W) uint8 or float -> pooler_output: B x (T, D)
        """
        if pixel_values.dtype == torch.uint8:
            pixel_values = normalize_pixels(
                pixel_values,
                self.config.image_mean,
                self.config.image_std,
                dtype=self.vision_tower.dtype,
            )
        return super().get_image_features(pixel_values=pixel_values, **kwargs)

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        """As LlavaModel's, with the mismatch reported in vision tokens (transformers' message counts
        features after flattening, e.g. "tokens: 35, features: 2304")."""
        if input_ids is None:
            return super().get_placeholder_mask(input_ids, inputs_embeds, image_features)
        mask = input_ids == self.config.image_token_id
        if input_ids.device.type != "meta":  # meta: shape-only runs (FLOP counting) cannot count
            num_tokens, num_features = int(mask.sum()), image_features.shape[0]  # (images*T, D)
            if num_tokens != num_features:
                per_image = self.config.num_image_tokens
                raise ValueError(
                    f"image features and image tokens do not match: tokens {num_tokens}, "
                    f"features {num_features} ({num_features // per_image} image(s) x {per_image} "
                    f"vision tokens); each image needs {per_image} <image> tokens "
                    f"(id {self.config.image_token_id}) in input_ids"
                )
        return mask.unsqueeze(-1).to(inputs_embeds.device)


class STFForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-STF for generation and training.

    ``forward(input_ids, pixel_values, attention_mask, labels)`` returns the causal-LM loss when
    labels are given; each image needs ``config.num_image_tokens`` ``<image>`` tokens in
    ``input_ids`` (the processor or the collator expands one placeholder into that many).
    """

    config_class = STFConfig
    config: STFConfig

    def __init__(self, config: STFConfig):
        # Not LlavaForConditionalGeneration.__init__: it would build a plain LlavaModel first.
        LlavaPreTrainedModel.__init__(self, config)
        self.model = STFModel(config)
        self.lm_head = torch.nn.Linear(
            config.text_config.hidden_size, config.text_config.vocab_size, bias=False
        )
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """Vision tokens for a batch of images, in the LLM's embedding space.

        Args:
            pixel_values: images at the tower's input size, uint8 (0..255) or already normalised.
        Returns:
            the projected vision tokens.

        Shape: (B, 3, H, W) -> (B, T, D) with T = config.num_image_tokens
        """
        outputs = self.model.get_image_features(
            pixel_values=pixel_values, return_dict=True, **kwargs
        )
        return torch.stack(list(outputs.pooler_output))

    # ---- what trains ----------------------------------------------------------------------
    def set_trainable_stage(self, stage: Stage) -> dict[str, int]:
        """Freezes and unfreezes parameters for a training stage, as in the paper.

        ``pretrain`` trains MBTF + projector; ``finetune`` trains LLM + MBTF + projector. The vision
        tower is frozen in both. Returns parameter counts ``{"trainable", "frozen"}``.
        """
        if stage not in STAGE_PARTS:
            raise ModelInputError(f"unknown training stage {stage!r}: use 'pretrain' or 'finetune'")
        return self.set_trainable_parts(STAGE_PARTS[stage])

    def set_trainable_parts(self, parts: Collection[Part]) -> dict[str, int]:
        """Trains exactly ``parts`` of ``projector`` (MBTF + projector), ``llm`` (with its LM
        head) and ``vision_tower``; the rest is frozen. A trained tower trains only what feeds
        the projector: its embeddings and the blocks up to the deepest selected hidden state (the
        blocks after it and the final norm never get a gradient). Returns parameter counts
        ``{"trainable", "frozen"}``."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ModelInputError(f"unknown model parts {sorted(unknown)}: choose from {PARTS}")
        self.model.multi_modal_projector.requires_grad_("projector" in parts)
        self.model.language_model.requires_grad_("llm" in parts)
        self.lm_head.requires_grad_("llm" in parts)
        self.model.vision_tower.requires_grad_("vision_tower" in parts)
        if "vision_tower" in parts:
            for module in self.unused_tower_modules():
                module.requires_grad_(False)
        counts = parameter_counts(self)
        logger.info(
            "training %s: %d trainable, %d frozen parameters",
            ", ".join(sorted(parts)) or "nothing",
            counts["trainable"],
            counts["frozen"],
        )
        return counts

    def image_only_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters only an image reaches (vision tower and projector): a text-only batch
        leaves them without gradients."""
        tower, projector = self.model.vision_tower, self.model.multi_modal_projector
        return [*tower.parameters(), *projector.parameters()]

    def unused_tower_modules(self, tower: torch.nn.Module | None = None) -> list[torch.nn.Module]:
        """The tower's modules whose output never reaches the projector: the blocks after the
        deepest selected hidden state and the final norm (CLIP and SigLIP towers alike).
        ``tower``: a copy of this model's tower (default: the tower itself)."""
        tower = self.model.vision_tower if tower is None else tower
        layers = tower.encoder.layers
        states = len(layers) + 1  # hidden state 0 is the embeddings' output
        deepest = max(i % states for i in self.config.feature_layers)
        return [*layers[deepest:], tower.post_layernorm]


# What each training stage trains (the paper's recipe: the tower stays frozen).
PARTS: tuple[Part, ...] = ("projector", "llm", "vision_tower")
STAGE_PARTS: dict[str, tuple[Part, ...]] = {
    "pretrain": ("projector",),
    "finetune": ("projector", "llm"),
}


# A saved directory reloads through the Auto classes once this module is imported.
AutoModel.register(STFConfig, STFModel, exist_ok=True)
AutoModelForImageTextToText.register(STFConfig, STFForConditionalGeneration, exist_ok=True)

__all__ = ["STFModel", "STFForConditionalGeneration"]
