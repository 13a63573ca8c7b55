"""Batched chat generation: per-row sampling, budgets, stop strings and streaming deltas."""

import pytest
import torch
from PIL import Image
from transformers import TopPLogitsWarper

from stf_model.generation import (
    ChatGenerator,
    ChatPrompt,
    RowwiseSampling,
    SamplingParams,
    _safe_prefix,
)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from stf_model import build_tiny, load_model_dir, save_model_dir

    path = tmp_path_factory.mktemp("gen") / "model"
    model, tokenizer = build_tiny(seed=0)
    save_model_dir(model, tokenizer, path)
    return ChatGenerator(*load_model_dir(path))


def _ask(generator, text, image=None, **params):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return ChatPrompt(
        generator.render([{"role": "user", "content": content}]),
        [image] if image else [],
        SamplingParams(**params),
    )


def test_greedy_batch_matches_transformers_generate_row_by_row(generator):
    red = Image.new("RGB", (80, 50), (220, 20, 20))
    prompts = [
        _ask(generator, "What colour is it?", red, max_new_tokens=6, temperature=0),
        _ask(generator, "Tell me something longer, please.", None, max_new_tokens=9, temperature=0),
        _ask(generator, "Shape?", red, max_new_tokens=3, temperature=0),
    ]
    results = generator.generate(prompts)
    for prompt, result in zip(prompts, results, strict=True):
        inputs = generator.processor(
            text=[prompt.text],
            images=prompt.images or None,
            add_special_tokens=False,
            return_tensors="pt",
        )
        ref = generator.model.generate(
            **inputs, max_new_tokens=prompt.params.max_new_tokens, do_sample=False
        )
        new = ref[0, inputs["input_ids"].shape[1] :]
        assert result.text == generator.tokenizer.decode(new, skip_special_tokens=True)
        assert result.completion_tokens == len(new) == prompt.params.max_new_tokens
        assert result.prompt_tokens == inputs["input_ids"].shape[1]
        assert result.prompt_tokens == generator.count_prompt_tokens(prompt)
        assert result.finish_reason == "length"


def test_stop_strings_and_streamed_deltas(generator):
    full = generator.generate([_ask(generator, "Go on.", max_new_tokens=20, temperature=0)])[0].text
    stop = full[4:6]
    events = []
    prompt = _ask(generator, "Go on.", max_new_tokens=20, temperature=0, stop=(stop,))
    result = generator.generate([prompt], on_delta=lambda *e: events.append(e))[0]
    assert result.text == full[: full.find(stop)]
    assert result.finish_reason == "stop"
    assert "".join(e[1] for e in events) == result.text  # the stop string never leaks out
    assert [e[2] for e in events][-1] == "stop" and all(e[2] is None for e in events[:-1])


def test_cancelled_rows_stop_early(generator):
    prompt = _ask(generator, "Keep talking.", max_new_tokens=30, temperature=0)
    other = _ask(generator, "Keep talking.", max_new_tokens=30, temperature=0)

    def cancel_first(row, text, reason, tokens):
        if row == 0 and tokens >= 3:
            prompt.cancelled.set()

    first, second = generator.generate([prompt, other], on_delta=cancel_first)
    assert first.finish_reason == "cancelled" and first.completion_tokens <= 5
    assert second.completion_tokens == 30


def test_rowwise_sampling_matches_transformers_top_p_and_greedy():
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    out = RowwiseSampling([0.7, 0.0, 1.0], [0.8, 1.0, 1.0])(None, scores.clone())
    expected = TopPLogitsWarper(0.8)(None, scores[:1] / 0.7)
    assert torch.equal(torch.isinf(out[0]), torch.isinf(expected[0]))
    assert torch.allclose(out[0][~torch.isinf(out[0])], expected[0][~torch.isinf(expected[0])])
    assert (~torch.isinf(out[1])).sum() == 1 and out[1].argmax() == scores[1].argmax()
    assert torch.equal(out[2], scores[2])


def test_safe_prefix_holds_back_possible_stop_starts():
    assert _safe_prefix("hello wor", ("world",)) == len("hello ")
    assert _safe_prefix("hello", ("xyz",)) == 5
    assert _safe_prefix("ab\ufffd", ()) == 2


def test_sampling_params_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
