"""The torch-free image path (``stf_model.images``): the pixel grid preprocessing stores must be
exactly what transformers' LLaVA image processor (which serving uses) makes of the same image."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stf_model import PixelGrid, build_image_processor, image_to_uint8, pixel_grid, preset_config
from stf_model.constants import CLIP_MEAN
from stf_model.errors import ModelInputError

ROOT = Path(__file__).resolve().parents[2]
SIGLIP_MEAN = (0.5, 0.5, 0.5)
# Shapes a careless corpus holds: square, landscape, portrait, odd sides, 1-pixel strips, images
# smaller than the tower's input (upscaled) and much larger ones (downscaled).
SHAPES = [(48, 48), (640, 480), (480, 640), (37, 53), (333, 1), (1, 50), (7, 5), (1001, 999)]


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image.convert(mode)


@pytest.mark.parametrize("aspect", ["pad", "crop"])
@pytest.mark.parametrize("size,mean", [(48, CLIP_MEAN), (336, CLIP_MEAN), (224, SIGLIP_MEAN)])
def test_the_grid_equals_transformers_llava_image_processor(aspect, size, mean):
    config = preset_config("tiny", **{"vision.image_size": size}, image_mean=list(mean))
    reference = build_image_processor(config, aspect)
    grid = pixel_grid(config, aspect)
    assert grid == PixelGrid(size, tuple(mean), aspect)
    for seed, (width, height) in enumerate(SHAPES):
        image = noise(width, height, seed=seed)
        ours = grid.to_uint8(image)
        assert ours.shape == (3, size, size) and ours.dtype == np.uint8
        np.testing.assert_array_equal(
            ours, image_to_uint8(image, reference), err_msg=f"{width}x{height} {aspect}"
        )


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_pil_mode_gives_the_same_grid(mode):
    config = preset_config("tiny")
    image = noise(61, 40, mode)
    np.testing.assert_array_equal(
        pixel_grid(config).to_uint8(image), image_to_uint8(image, build_image_processor(config))
    )


def test_the_pad_colour_is_the_mean_and_the_image_is_centred():
    grid = PixelGrid(8, (0.5, 0.25, 1.0), "pad")
    pixels = grid.to_uint8(Image.new("RGB", (8, 4), (9, 9, 9)))
    assert pixels[:, 2:6].tolist() == np.full((3, 4, 8), 9).tolist()
    for rows in (pixels[:, :2], pixels[:, 6:]):
        assert [int(c) for c in rows[:, 0, 0]] == [127, 63, 255]
        assert (rows == rows[:, :1, :1]).all()


def test_an_unknown_aspect_is_refused():
    with pytest.raises(ModelInputError, match="unknown image aspect 'stretch'"):
        PixelGrid(48, CLIP_MEAN, "stretch")


def test_decoding_and_the_grid_import_neither_torch_nor_transformers_model_code():
    """What a preprocessing actor imports from the library: records, templates, images."""
    code = (
        "import sys\n"
        "import stf_model.records, stf_model.images, stf_model.chat_templates\n"
        "import stf_model.tokenizer, stf_model.user_text\n"
        "print(sorted(m for m in ('torch', 'transformers.modeling_utils') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
