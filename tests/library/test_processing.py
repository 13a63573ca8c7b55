"""Image preprocessing, the processor's token expansion and the chat templates' label masks."""

import numpy as np
import pytest
import torch
from PIL import Image

from stf_model import (
    build_image_processor,
    build_processor,
    build_tiny_tokenizer,
    get_chat_template,
    image_to_uint8,
    normalize_pixels,
    preset_config,
    to_rgb,
)
from stf_model.constants import CLIP_MEAN, CLIP_STD


def supervised_text(tokenizer, messages):
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    return tokenizer.decode(ids), tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])


def test_pad_to_square_with_mean_colour():
    config = preset_config("tiny")  # 48 px input
    wide = Image.new("RGB", (96, 48), (255, 0, 0))  # pads 24 px above and below after resize
    pixels = image_to_uint8(wide, build_image_processor(config, "pad"))
    assert pixels.shape == (3, 48, 48) and pixels.dtype == np.uint8
    mean_rgb = [round(m * 255) for m in CLIP_MEAN]
    assert pixels[:, 0, 24].tolist() == pytest.approx(mean_rgb, abs=1)  # top band: pad colour
    assert pixels[:, 24, 24].tolist() == [255, 0, 0]  # centre: the image
    cropped = image_to_uint8(wide, build_image_processor(config, "crop"))
    assert (cropped[0] == 255).all() and (cropped[1:] == 0).all()  # centre crop keeps only red


@pytest.mark.parametrize(
    "mode,image,rgb",
    [
        ("L", lambda: Image.new("L", (30, 30), 90), (90, 90, 90)),
        ("RGBA", lambda: Image.new("RGBA", (30, 30), (200, 100, 50, 128)), (200, 100, 50)),
        ("P", lambda: _palette_image((0, 128, 255)), (0, 128, 255)),
        ("CMYK", lambda: Image.new("CMYK", (30, 30), (0, 255, 255, 0)), (255, 0, 0)),
        ("I;16", lambda: Image.new("I;16", (30, 30), 40000), (156, 156, 156)),  # 40000 / 257
    ],
)
def test_any_mode_becomes_rgb(mode, image, rgb):
    """Every mode comes out as three channels holding the image's colour (a square image, so
    nothing is padded): 16-bit grey rescaled to 8 bits, not clipped to white."""
    picture = image()
    assert picture.mode == mode
    out = image_to_uint8(picture, build_image_processor(preset_config("tiny")))
    assert out.shape == (3, 48, 48) and out.dtype == np.uint8
    assert (out == np.array(rgb, dtype=np.uint8)[:, None, None]).all(), out[:, 0, 0]


def _palette_image(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("P", (30, 30), 1)
    image.putpalette([0, 0, 0, *colour])
    return image


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("I;16", 30000, 117),
        ("I;16", 65535, 255),
        ("I", 257 * 200, 200),
        ("F", 0.5, 128),
        ("L", 90, 90),
    ],
)
def test_high_bit_depth_images_are_rescaled_not_clipped(mode, value, expected):
    rgb = to_rgb(Image.new(mode, (4, 4), value))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (expected,) * 3


def test_uint8_normalisation_matches_the_float_processor():
    config = preset_config("tiny")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    processor = build_image_processor(config)
    as_float = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"])
    as_uint8 = torch.from_numpy(image_to_uint8(image, processor))[None]
    torch.testing.assert_close(
        normalize_pixels(as_uint8, CLIP_MEAN, CLIP_STD), as_float, atol=0.02, rtol=0
    )


@pytest.mark.parametrize("window,tokens", [(1, 144), (2, 36), (3, 16), (4, 9)])
def test_processor_expands_image_to_the_model_token_count(window, tokens):
    config = preset_config("tiny", stf_window=window)
    processor = build_processor(config, build_tiny_tokenizer())
    out = processor(images=Image.new("RGB", (20, 30)), text="<image>\nhi", return_tensors="pt")
    assert int((out["input_ids"] == config.image_token_index).sum()) == tokens


def test_vicuna_v1_masks_only_assistant_turns():
    tokenizer = build_tiny_tokenizer(chat_template="vicuna_v1")
    messages = [
        {"role": "user", "content": "<image>\nWhat color is the circle?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "How many shapes?"},
        {"role": "assistant", "content": "two"},
    ]
    text, supervised = supervised_text(tokenizer, messages)
    assert text.startswith("<s>A chat between a curious user")
    assert (
        "USER: <image>\nWhat color is the circle? ASSISTANT: red</s>USER: How many shapes? ASSISTANT: two</s>"
        in text
    )
    assert supervised == " red</s> two</s>"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("What color is the circle? ASSISTANT:")


def test_vicuna_v1_content_parts_put_image_first():
    tokenizer = build_tiny_tokenizer(chat_template="vicuna_v1")
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image"}]}
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("USER: <image>\nDescribe. ASSISTANT:")


def test_plain_template_is_image_then_supervised_caption():
    tokenizer = build_tiny_tokenizer(chat_template="plain")
    messages = [
        {"role": "user", "content": "<image>\nDescribe the image briefly."},
        {"role": "assistant", "content": "A red circle at the top left."},
    ]
    text, supervised = supervised_text(tokenizer, messages)
    assert text == "<s><image>A red circle at the top left.\n"
    assert supervised == "A red circle at the top left.\n"


def test_unknown_template_and_role():
    with pytest.raises(ValueError, match="unknown chat template 'llama3'"):
        get_chat_template("llama3")
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(Exception, match="unknown role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tiny_tokenizer_is_deterministic_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    text = "USER: <image>\nHow many red circles? ASSISTANT: three</s>"
    assert a(text)["input_ids"] == b(text)["input_ids"]
    a.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == a(text)["input_ids"]
    assert loaded.convert_tokens_to_ids("<image>") == 4 and len(loaded) == 512
    assert loaded.chat_template == a.chat_template
