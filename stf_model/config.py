"""Configuration of a LLaVA-STF model: transformers' LlavaConfig plus the token-fusion knobs.

The published LLaVA-STF settings (Tang & Shen, 2025) are the defaults: Multi-Block Token Fusion over
the CLIP hidden states ``[-2, 21, 18, 15, 12, 9, 6, 3]`` (deepest first) and a 2x2 Spatial Token
Fusion window. One block and window 1 give LLaVA-1.5 exactly.
"""

from __future__ import annotations

from dataclasses import field

from transformers import AutoConfig, LlavaConfig

from stf_model.constants import CLIP_MEAN, CLIP_STD, PUBLISHED_MBTF_LAYERS
from stf_model.errors import ModelInputError

# Vision towers whose hidden states are only patch tokens (no CLS to drop).
TOWERS_WITHOUT_CLS = ("siglip_vision_model",)


class STFConfig(LlavaConfig):
    r"""LLaVA config with Multi-Block and Spatial Token Fusion.

    Args (on top of :class:`transformers.LlavaConfig`):
        vision_feature_layer: hidden-state index (int) or list of indices of the vision tower whose
            patch tokens feed the projector. A list of several indices turns on MBTF; the list order
            is the channel order of the concatenation (the published code puts the deepest first).
        stf_window: side of the square window of patch tokens merged into one token (1 = no fusion).
        mbtf_hidden_size: hidden width of MBTF's ``Linear(nC -> h) GELU Linear(h -> C)``;
            default ``n * C // 2`` (4C for the published 8 blocks).
        projector_hidden_size: hidden width of the projector ``Linear(w^2 C -> h) GELU Linear(h -> D)``;
            default ``4 * w^2 * C`` (16C for w=2, as published) and ``D`` for w=1 (LLaVA-1.5).
        image_mean, image_std: per-channel normalisation applied on the device to uint8 pixels.
    """

    model_type = "llava_stf"

    vision_feature_layer: int | list[int] = field(
        default_factory=lambda: list(PUBLISHED_MBTF_LAYERS)
    )
    stf_window: int = 2
    mbtf_hidden_size: int | None = None
    projector_hidden_size: int | None = None
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_fusion()
        # Derived once here, so that every reader (processor, collator, model) agrees.
        self.image_seq_length = self.num_image_tokens

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def has_cls_token(self) -> bool:
        """Whether the tower's hidden states start with a CLS token (CLIP) or are all patches
        (SigLIP); decides what the projector drops and how many tokens an image takes."""
        return self.vision_config.model_type not in TOWERS_WITHOUT_CLS

    @property
    def feature_layers(self) -> list[int]:
        """The vision hidden-state indices as a list (one element when MBTF is off)."""
        layers = self.vision_feature_layer
        return [layers] if isinstance(layers, int) else list(layers)

    @property
    def grid_size(self) -> int:
        """Side of the vision tower's patch grid (24 for CLIP ViT-L/14 at 336 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def num_image_tokens(self) -> int:
        """Vision tokens one image occupies in the LLM sequence: ``(grid / window)^2``."""
        return (self.grid_size // self.stf_window) ** 2

    @property
    def resolved_mbtf_hidden_size(self) -> int:
        return (
            self.mbtf_hidden_size or self.vision_config.hidden_size * len(self.feature_layers) // 2
        )

    @property
    def resolved_projector_hidden_size(self) -> int:
        if self.projector_hidden_size:
            return self.projector_hidden_size
        if self.stf_window == 1:
            return self.text_config.hidden_size
        return 4 * self.stf_window**2 * self.vision_config.hidden_size

    # ---- validation -----------------------------------------------------------------------
    def _check_fusion(self) -> None:
        vision = self.vision_config
        # The patch convolution floors: SigLIP so400m's 384 px in 14 px patches is a 27x27
        # grid (the last 6 pixels unused), as transformers' processors count it too.
        if vision.image_size < vision.patch_size:
            raise ModelInputError(
                f"vision image_size {vision.image_size} is smaller than patch_size "
                f"{vision.patch_size}: no patch fits"
            )
        expected = "default" if self.has_cls_token else "full"
        if self.vision_feature_select_strategy != expected:
            why = (
                "its CLS token is dropped; keeping it breaks the square grid"
                if self.has_cls_token
                else "it has no CLS token; 'default' would drop a patch"
            )
            raise ModelInputError(
                f"vision_feature_select_strategy must be {expected!r} for a {vision.model_type} "
                f"tower ({why}): got {self.vision_feature_select_strategy!r}"
            )
        if (
            not isinstance(self.stf_window, int)
            or isinstance(self.stf_window, bool)
            or self.stf_window < 1
        ):
            raise ModelInputError(f"stf_window must be a positive integer, got {self.stf_window!r}")
        grid = self.grid_size
        if grid % self.stf_window:
            raise ModelInputError(
                f"vision grid {grid}x{grid} is not divisible by stf_window {self.stf_window}; "
                f"choose a window that divides {grid} "
                f"(one of {[w for w in range(1, grid + 1) if grid % w == 0]})"
            )
        layers = self.feature_layers
        if not layers:
            raise ModelInputError(
                "vision_feature_layer is empty: give at least one hidden-state index"
            )
        num_states = vision.num_hidden_layers + 1  # index 0 is the embedding output
        bad = [i for i in layers if not -num_states <= i < num_states]
        if bad:
            raise ModelInputError(
                f"vision_feature_layer {bad} out of range for a vision tower with "
                f"{vision.num_hidden_layers} blocks ({num_states} hidden states): "
                f"valid indices are {-num_states}..{num_states - 1}"
            )
        normalised = [i % num_states for i in layers]
        if len(set(normalised)) != len(normalised):
            raise ModelInputError(
                f"vision_feature_layer {layers} names the same hidden state twice "
                f"(as non-negative indices: {normalised})"
            )


# A saved directory (model_type "llava_stf") reloads through AutoConfig once this module is imported.
AutoConfig.register(STFConfig.model_type, STFConfig, exist_ok=True)

__all__ = ["STFConfig"]
