"""Numbers fixed by the method, CLIP or LLaVA, named once."""

# Hidden-state indices of the published MBTF (reference code), deepest first.
PUBLISHED_MBTF_LAYERS = (-2, 21, 18, 15, 12, 9, 6, 3)
PUBLISHED_STF_WINDOW = 2

# The named model shapes (:data:`stf_model.presets.PRESETS`): here too, so that a spec naming one
# validates without importing torch.
PRESET_NAMES = ("tiny", "llava-stf-7b", "llava-1.5-7b")

# OpenAI CLIP pixel statistics (also LLaVA's pad colour, times 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
