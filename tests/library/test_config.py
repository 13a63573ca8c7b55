"""STFConfig: derived sizes, presets and the errors an impossible config raises."""

import pytest

from stf_model import STFConfig, preset_config


def test_published_preset_sizes():
    config = preset_config("llava-stf-7b")
    assert config.feature_layers == [-2, 21, 18, 15, 12, 9, 6, 3]
    assert config.grid_size == 24 and config.stf_window == 2
    assert config.num_image_tokens == 144 and config.image_seq_length == 144
    assert config.resolved_mbtf_hidden_size == 4096  # 4C
    assert config.resolved_projector_hidden_size == 16384  # 16C


def test_baseline_preset_is_llava_15():
    config = preset_config("llava-1.5-7b")
    assert config.feature_layers == [-2] and config.num_image_tokens == 576
    assert config.resolved_projector_hidden_size == 4096  # C -> D -> D


@pytest.mark.parametrize("window,tokens", [(1, 576), (2, 144), (3, 64), (4, 36)])
def test_windows_at_real_grid(window, tokens):
    assert preset_config("llava-stf-7b", stf_window=window).num_image_tokens == tokens


def test_tiny_grid_takes_every_window_up_to_4():
    for window, tokens in [(1, 144), (2, 36), (3, 16), (4, 9)]:
        assert preset_config("tiny", stf_window=window).num_image_tokens == tokens


def test_grid_not_divisible_by_window():
    with pytest.raises(ValueError, match=r"vision grid 24x24 is not divisible by stf_window 5"):
        preset_config("llava-stf-7b", stf_window=5)


def test_block_index_out_of_range():
    with pytest.raises(ValueError, match=r"vision_feature_layer \[25\] out of range .* 24 blocks"):
        preset_config("llava-stf-7b", vision_feature_layer=[-2, 25])
    with pytest.raises(ValueError, match=r"out of range"):
        preset_config("tiny", vision_feature_layer=[-8])


def test_duplicate_block():
    with pytest.raises(ValueError, match="same hidden state twice"):
        preset_config("llava-stf-7b", vision_feature_layer=[-2, 23])


def test_other_errors():
    with pytest.raises(ValueError, match="positive integer"):
        preset_config("tiny", stf_window=0)
    with pytest.raises(ValueError, match="empty"):
        preset_config("tiny", vision_feature_layer=[])
    with pytest.raises(ValueError, match="strategy must be 'default'"):
        preset_config("tiny", vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset_config("huge")


def test_config_json_round_trip(tmp_path):
    config = preset_config("tiny", stf_window=3)
    config.save_pretrained(tmp_path)
    loaded = STFConfig.from_pretrained(tmp_path)
    assert loaded.stf_window == 3 and loaded.feature_layers == config.feature_layers
    assert loaded.num_image_tokens == 16


def test_a_grid_the_patches_do_not_fill_is_floored_as_the_tower_does():
    """SigLIP so400m: 384 px in 14 px patches is 27x27 patches (the tower's conv floors)."""
    from transformers import SiglipVisionConfig

    from stf_model import STFForConditionalGeneration

    vision = SiglipVisionConfig(
        image_size=384,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
    )

    def siglip(window):
        text = preset_config("tiny").text_config
        return STFConfig(
            vision_config=vision,
            text_config=text,
            vision_feature_layer=[-2, 2],
            vision_feature_select_strategy="full",
            stf_window=window,
            image_token_index=4,
        )

    config = siglip(3)
    assert config.grid_size == 27 and config.num_image_tokens == 81
    with pytest.raises(ValueError, match="27x27 is not divisible by stf_window 2"):
        siglip(2)
    with pytest.raises(ValueError, match="stf_window must be a positive integer"):
        siglip(True)
    tower_tokens = STFForConditionalGeneration(config).model.vision_tower.embeddings.num_patches
    assert tower_tokens == 27 * 27


@pytest.mark.parametrize("override", [{"stf_windw": 3}, {"text.num_hiden_layers": 4}])
def test_a_misspelt_override_is_refused_not_stored(override):
    with pytest.raises(ValueError, match="unknown override"):
        preset_config("tiny", **override)
    assert preset_config("tiny", **{"text.num_hidden_layers": 1}).text_config.num_hidden_layers == 1
