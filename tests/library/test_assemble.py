"""Assembling LLaVA-STF from a base LLM and a vision tower saved in their public layouts (LLaMA /
Vicuna + CLIP, Qwen2 + SigLIP): the parts' weights are kept, text tokenises as before, the towers'
CLS conventions hold, and impossible fusion settings are clear errors."""

import pytest
import torch
from PIL import Image
from support.base_models import save_clip, save_llama, save_qwen2, save_siglip

from stf_model import get_chat_template, load_model_dir, save_model_dir
from stf_model.assemble import assemble, image_statistics, load_llm, load_tower
from stf_model.chat_templates import llm_chat_template
from stf_model.errors import ModelInputError
from stf_model.processing import normalize_pixels

TEXTS = ["What color is the shape at the top left?", "  two shapes:\na red circle! é ü 😀", ""]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {
        "llama": save_llama(root / "llama"),
        "qwen2": save_qwen2(root / "qwen2"),
        "clip": save_clip(root / "clip"),
        "siglip": save_siglip(root / "siglip"),
    }


def build(bases, llm_name, tower_name, template="vicuna_v1", **fusion):
    llm, tokenizer = load_llm(bases[llm_name], torch.float32)
    base_tokenizer = load_llm(bases[llm_name], torch.float32)[1]
    tower, processor = load_tower(bases[tower_name], torch.float32)
    mean, std = image_statistics(processor, tower.config)
    chat = llm_chat_template(tokenizer) if template == "llm" else get_chat_template(template)
    settings = {"vision_feature_layer": [-2, 2], "stf_window": 2, **fusion}
    model, tokenizer = assemble(
        llm, tower, tokenizer, **settings, image_mean=mean, image_std=std, chat_template=chat
    )
    return model, tokenizer, llm, tower, base_tokenizer, processor


def test_llama_and_clip_keep_their_weights_and_tokenization(bases):
    model, tokenizer, llm, tower, base, processor = build(bases, "llama", "clip")
    ours = model.state_dict()
    for key, value in llm.model.state_dict().items():
        if key != "embed_tokens.weight":
            assert torch.equal(ours[f"model.language_model.{key}"], value), key
    old = llm.get_input_embeddings().weight
    new = model.get_input_embeddings().weight
    assert new.shape[0] == old.shape[0] + 1 and torch.equal(new[: old.shape[0]], old)
    torch.testing.assert_close(new[-1], old.mean(dim=0))  # <image>'s row: the mean row
    torch.testing.assert_close(model.lm_head.weight[-1], llm.lm_head.weight.mean(dim=0))
    for key, value in tower.state_dict().items():
        assert torch.equal(ours[f"model.vision_tower.{key}"], value), key
    for text in TEXTS:  # text tokenises exactly as with the base tokenizer
        assert tokenizer(text)["input_ids"] == base(text)["input_ids"], text
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer("USER: <image>\nWhat?")["input_ids"].count(image_id) == 1
    assert tokenizer.pad_token == tokenizer.unk_token == "<unk>"  # LLaVA's choice for LLaMA
    assert model.config.image_mean == list(processor.image_mean)
    assert model.config.vision_feature_select_strategy == "default"  # CLIP's CLS is dropped
    assert model.config.num_image_tokens == 36 and not model.config.tie_word_embeddings


def test_qwen2_and_siglip_keep_tied_embeddings_and_every_patch(bases, tmp_path):
    model, tokenizer, llm, tower, base, processor = build(bases, "qwen2", "siglip", "llm")
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as Qwen2's
    assert not any(k.startswith("model.vision_tower.head.") for k in model.state_dict())
    assert model.config.vision_feature_select_strategy == "full"  # no CLS: every patch counts
    assert model.config.image_std == [0.5, 0.5, 0.5]  # SigLIP's statistics, from its processor
    assert tokenizer.pad_token == "<|endoftext|>"  # Qwen2 has one: kept
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == base(text)["input_ids"], text

    # A full image pipeline through a saved directory: 12x12 patches / window 2 = 36 tokens.
    save_model_dir(model, tokenizer, tmp_path / "m")
    reloaded, processor = load_model_dir(tmp_path / "m")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    inputs = processor(images=Image.new("RGB", (60, 40), "red"), text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == reloaded.config.image_token_id).sum()) == 36
    out = reloaded.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_siglip_window_1_one_block_feeds_every_patch(bases):
    model, *_ = build(bases, "qwen2", "siglip", vision_feature_layer=-2, stf_window=1)
    pixels = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    seen = {}
    hook = model.model.multi_modal_projector.register_forward_pre_hook(
        lambda mod, args: seen.update(input=args[0])
    )
    features = model.get_image_features(pixels)
    hook.remove()
    assert features.shape == (2, 144, 64)  # 12x12, none dropped
    # The projector reads block -2's states of all 144 patches (SigLIP has no CLS to drop).
    tower = model.model.vision_tower
    normalised = normalize_pixels(pixels, model.config.image_mean, model.config.image_std)
    hidden = tower(normalised, output_hidden_states=True).hidden_states
    torch.testing.assert_close(seen["input"], hidden[-2])


def test_llm_template_marks_answers_and_renders_like_the_base(bases):
    _, tokenizer, *_ = build(bases, "qwen2", "clip", "llm")
    base = load_llm(bases["qwen2"], torch.float32)[1]
    messages = [
        {"role": "user", "content": "How many?"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "red"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == base.apply_chat_template(
        messages, tokenize=False
    )
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    supervised = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(supervised) == "two<|im_end|>red<|im_end|>"


def test_impossible_settings_name_the_grid_the_layers_and_the_choices(bases):
    with pytest.raises(
        ModelInputError, match=r"grid 12x12 is not divisible by stf_window 5.*\[1, 2, 3, 4, 6, 12\]"
    ):
        build(bases, "llama", "clip", stf_window=5)
    with pytest.raises(ModelInputError, match=r"\[21\] out of range .* 4 blocks .* -5..4"):
        build(bases, "llama", "clip", vision_feature_layer=[-2, 21])
    llm, tokenizer = load_llm(bases["llama"], torch.float32)
    with pytest.raises(ModelInputError, match="not supported"):
        assemble(
            llm,
            llm,
            tokenizer,
            vision_feature_layer=-2,
            stf_window=1,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            chat_template=get_chat_template("plain"),
        )
    with pytest.raises(ModelInputError, match="not a vision tower"):
        load_tower(bases["llama"], torch.float32)
    with pytest.raises(ModelInputError, match="no chat template"):
        llm_chat_template(tokenizer)  # Vicuna has none


def test_an_image_processor_for_another_size_is_refused(bases):
    tower, processor = load_tower(bases["clip"], torch.float32)
    processor.crop_size = {"height": 336, "width": 336}
    with pytest.raises(ModelInputError, match="makes 336 px images but the tower takes 48 px"):
        image_statistics(processor, tower.config)


def test_a_llm_whose_tokenizer_is_only_a_sentencepiece_model_loads(tmp_path):
    import sentencepiece
    from support.base_models import save_llama_with_only_a_sentencepiece_model

    from stf_model.assemble import load_llm

    model = save_llama_with_only_a_sentencepiece_model(tmp_path / "vicuna")
    _, tokenizer = load_llm(tmp_path / "vicuna", torch.float32)
    reference = sentencepiece.SentencePieceProcessor(model_proto=model)
    for text in ["What color is the circle?", "two blue squares, 123 é\nthe top left"]:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
