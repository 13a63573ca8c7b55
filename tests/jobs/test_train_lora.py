"""LoRA finetuning (`lora:` in a train spec) on the tests' local Ray with 2 CPU workers and real
DeepSpeed: the weight algebra of the merged model, what stays untouched, PEFT reading the adapter,
checkpoints that hold only the trainable state, serving and inference from base + adapter, resume
after a killed worker (bit for bit), and the refusals."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.jobkill import actor_processes
from support.run_metrics import losses_by_step, metrics_rows

from pipelines.errors import SpecError
from pipelines.spec import load_spec
from pipelines.train import TrainSpec
from pipelines.train.job import run
from stf_model import load_model_dir
from stf_model.errors import ModelInputError

pytestmark = pytest.mark.usefixtures("ray_local")
R, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def base(shards, tmp_path_factory):
    """Finetuning shards and a tiny model directory to adapt: (shards folder, model dir)."""
    from stf_model import build_tiny, save_model_dir

    root = tmp_path_factory.mktemp("lora")
    save_model_dir(*build_tiny(seed=3), root / "base")
    return shards["finetune"], str(root / "base")


def lora_spec(root, name, data, **overrides) -> TrainSpec:
    fields = dict(
        name=name,
        storage_path=str(Path(root) / "runs"),
        stage="finetune",
        data=[data],
        deepspeed={
            "zero_stage": 2,
            "precision": "fp32",
            "micro_batch_size": 4,
            "gradient_accumulation": 2,
            "gradient_checkpointing": True,
        },
        log_every=1,
        checkpoint_every=2,
        epochs=10,
        max_steps=4,
        lora={"r": R, "alpha": ALPHA},
    )
    fields.update(overrides)
    return TrainSpec.model_validate({k: v for k, v in fields.items() if v is not None})


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    """ZeRO-2 on 2 workers, gradient checkpointing and accumulation: (spec, summary)."""
    data, model = base
    spec = lora_spec(tmp_path_factory.mktemp("lora-run"), "adapt", data, init_from=model)
    return spec, run(spec)


def adapter_pairs(spec: TrainSpec):
    """(layer name in the model, A, B) of each adapted layer in the run's RUN/adapter."""
    adapter = load_file(os.path.join(spec.run_dir, "adapter", "adapter_model.safetensors"))
    for key, a in adapter.items():
        if ".lora_A." in key:
            layer = key.split("base_model.model.", 1)[1].split(".lora_A.")[0]
            yield layer, a, adapter[key.replace(".lora_A.", ".lora_B.")]


def test_the_merged_model_is_the_base_plus_alpha_over_r_b_a(base, lora_run):
    spec, summary = lora_run
    start, _ = load_model_dir(base[1])
    merged, _ = load_model_dir(summary.model)
    before, after = dict(start.named_parameters()), dict(merged.named_parameters())
    adapted = set()
    for layer, a, b in adapter_pairs(spec):
        expected = before[f"{layer}.weight"] + (ALPHA / R) * (b @ a)
        torch.testing.assert_close(after[f"{layer}.weight"], expected, rtol=1e-5, atol=1e-6)
        assert (b != 0).any()  # trained: B starts at zero
        adapted.add(layer)
    linear = {
        n for n, m in start.model.language_model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    assert adapted == {f"model.language_model.{n}" for n in linear}  # every linear layer of the LLM
    for name, value in before.items():
        layer = name.rsplit(".", 1)[0]
        if layer in adapted:
            continue
        if "multi_modal_projector" in name:
            continue
        torch.testing.assert_close(
            after[name], value, rtol=0, atol=0
        )  # tower, embeddings, norms, head
    moved = [
        n for n in before if "multi_modal_projector" in n and not torch.equal(before[n], after[n])
    ]
    assert len(moved) == len([n for n in before if "multi_modal_projector" in n])  # trained in full


def _logits_of_adapter_and_merged(base, spec, merged):
    """Logits of PEFT's model (the adapter over the start) and of the merged model, one prompt."""
    from peft import PeftModel

    start, _ = load_model_dir(base[1], dtype=merged.dtype)
    adapted = PeftModel.from_pretrained(start, os.path.join(spec.run_dir, "adapter")).eval()
    ids = torch.tensor([[1, 7, 9, 11, 13]])
    pixels = torch.randint(0, 256, (1, 3, 48, 48), dtype=torch.uint8)
    ids = torch.cat(
        [
            ids[:, :1],
            torch.full((1, merged.config.num_image_tokens), merged.config.image_token_index),
            ids[:, 1:],
        ],
        1,
    )
    with torch.no_grad():
        return (
            adapted(input_ids=ids, pixel_values=pixels).logits.float(),
            merged.eval()(input_ids=ids, pixel_values=pixels).logits.float(),
        )


def test_peft_reads_the_adapter_over_the_start_model_and_gives_the_merged_logits(base, lora_run):
    spec, summary = lora_run
    merged, _ = load_model_dir(summary.model)
    peft_logits, merged_logits = _logits_of_adapter_and_merged(base, spec, merged)
    torch.testing.assert_close(peft_logits, merged_logits, rtol=1e-4, atol=1e-4)


def test_checkpoints_hold_only_the_trainable_state(lora_run):
    spec, summary = lora_run
    state = torch.load(
        os.path.join(summary.checkpoint, "ds", "mp_rank_00_model_states.pt"), weights_only=False
    )
    saved = set(state["module"])
    assert saved and all(".lora_" in k or "modules_to_save" in k for k in saved)
    assert not any("vision_tower" in k for k in saved)  # the frozen tower is not in it


def test_serve_and_infer_load_base_plus_adapter_as_the_merged_model(base, lora_run, tmp_path):
    from pipelines.models import load_generator
    from pipelines.spec import InferenceModel, StorageOptions
    from stf_model.generation import ChatPrompt, SamplingParams

    spec, summary = lora_run
    pair = load_generator(
        InferenceModel(path=base[1], adapter=os.path.join(spec.run_dir, "adapter")),
        StorageOptions(),
    )
    merged = load_generator(InferenceModel(path=summary.model), StorageOptions())
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is there?"}]}]
    answers = [
        g.generate([ChatPrompt(g.render(messages), [], SamplingParams(6, 0.0))])[0].text
        for g in (pair, merged)
    ]
    assert answers[0] == answers[1]


def test_an_adapter_is_refused_over_another_base(lora_run, tmp_path):
    from pipelines.models import load_generator
    from pipelines.spec import InferenceModel, StorageOptions
    from stf_model import build_tiny, save_model_dir

    spec, _ = lora_run
    save_model_dir(*build_tiny(seed=7), tmp_path / "other")
    with pytest.raises(ModelInputError, match="adapts .* not .*other.*another model's weights"):
        load_generator(
            InferenceModel(
                path=str(tmp_path / "other"), adapter=os.path.join(spec.run_dir, "adapter")
            ),
            StorageOptions(),
        )


def test_the_estimate_counts_what_peft_trains(base, lora_run):
    from pipelines.models import load_config
    from pipelines.train.arithmetic import memory_estimate
    from pipelines.train.model import adapt, build_model

    spec, _ = lora_run
    estimate = memory_estimate(spec, load_config(base[1], spec.storage))
    model, _ = build_model(spec)
    model.set_trainable_parts(["projector", "llm"])
    adapted = adapt(model, spec)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in adapted.parameters() if not p.requires_grad)
    assert (estimate.trainable_params, estimate.frozen_params) == (trainable, frozen)
    full = memory_estimate(
        spec.model_copy(update={"lora": None}), load_config(base[1], spec.storage)
    )
    assert estimate.model_states_gb < full.model_states_gb


@pytest.fixture(scope="module")
def qlora_run(base, tmp_path_factory):
    """QLoRA (the LLM's linear layers in nf4) in bf16, otherwise as ``lora_run``: (spec, summary)."""
    data, model = base
    spec = lora_spec(
        tmp_path_factory.mktemp("qlora-run"),
        "qadapt",
        data,
        init_from=model,
        lora={"r": R, "alpha": ALPHA, "quantize": "nf4"},
        deepspeed={
            "zero_stage": 2,
            "precision": "bf16",
            "micro_batch_size": 4,
            "gradient_accumulation": 2,
            "gradient_checkpointing": True,
        },
    )
    return spec, run(spec)


def test_qlora_holds_every_llm_linear_layer_in_4_bits_and_nothing_else(base, qlora_run):
    from bitsandbytes.nn import Linear4bit

    from pipelines.train.model import build_model

    spec, _ = qlora_run
    model, _ = build_model(spec)
    quantized = {n for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    llm_linear = {
        f"model.language_model.{n}"
        for n, m in model.model.language_model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    assert quantized == llm_linear and quantized
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.model.multi_modal_projector.parameters())


def test_qlora_merges_its_adapters_into_the_full_precision_start(base, qlora_run):
    spec, summary = qlora_run
    start, _ = load_model_dir(base[1])
    merged, _ = load_model_dir(summary.model)
    before, after = dict(start.named_parameters()), dict(merged.named_parameters())
    layers = 0
    for layer, a, b in adapter_pairs(spec):
        assert (b != 0).any()
        expected = before[f"{layer}.weight"] + (ALPHA / R) * (b.float() @ a.float())
        # bf16 rounding, far below nf4's error: the 4-bit weights were not what got merged
        torch.testing.assert_close(after[f"{layer}.weight"].float(), expected, rtol=8e-3, atol=2e-5)
        layers += 1
    assert layers == 7 * start.config.text_config.num_hidden_layers
    peft_logits, merged_logits = _logits_of_adapter_and_merged(base, spec, merged)
    torch.testing.assert_close(peft_logits, merged_logits, rtol=0.05, atol=0.05)


def test_a_qlora_checkpoint_holds_no_base_weight(qlora_run):
    spec, summary = qlora_run
    state = torch.load(
        os.path.join(summary.checkpoint, "ds", "mp_rank_00_model_states.pt"), weights_only=False
    )
    # beside the trained state, bitsandbytes' quantization constants (absmax, quant_map, ...)
    constants = re.compile(
        r"\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..*)$"
    )
    assert all(
        ".lora_" in k or "modules_to_save" in k or constants.search(k) for k in state["module"]
    )
    assert not any(k.endswith("base_layer.weight") for k in state["module"])


def test_the_qlora_estimate_counts_its_weights_in_4_bits(base, qlora_run):
    from pipelines.models import load_config
    from pipelines.train.arithmetic import memory_estimate
    from stf_model.lora import QUANTIZED_BYTES

    spec, _ = qlora_run
    config = load_config(base[1], spec.storage)
    qlora = memory_estimate(spec, config)
    lora = memory_estimate(
        spec.model_copy(update={"lora": spec.lora.model_copy(update={"quantize": None})}), config
    )
    start, _ = load_model_dir(base[1])
    language = start.model.language_model
    linear = sum(m.weight.numel() for m in language.modules() if isinstance(m, torch.nn.Linear))
    assert qlora.trainable_params == lora.trainable_params
    assert lora.frozen_weights_gb - qlora.frozen_weights_gb == pytest.approx(
        (2 - QUANTIZED_BYTES) * linear / 1e9
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["lora.r=0"], "lora.r"),
        (["lora.dropout=-0.1"], "lora.dropout"),
        (["lora.alpha=0"], "lora.alpha"),
        (["stage=pretrain"], "lora adapts the LLM"),
        (["trainable=[projector]"], "lora adapts the LLM"),
        (["init_from=null", "model=tiny"], "not the preset 'tiny'"),
        (["lora.target_modules=[]"], "lora.target_modules"),
    ],
)
def test_inconsistent_lora_specs_are_refused(tmp_path, overrides, message):
    path = tmp_path / "train.yaml"
    path.write_text(
        f"name: x\nstorage_path: {tmp_path}\nstage: finetune\ndata: [{tmp_path}]\ninit_from: {tmp_path}/m\nlora: {{r: 4}}\n"
    )
    with pytest.raises(SpecError, match=message):
        load_spec(TrainSpec, str(path), overrides)


def test_a_target_name_the_llm_lacks_is_refused_naming_those_it_has(base):
    from pipelines.models import load_config
    from pipelines.train.arithmetic import memory_estimate

    spec = lora_spec(
        "/tmp", "x", base[0], init_from=base[1], lora={"r": 4, "target_modules": ["q_proj", "qkv"]}
    )
    with pytest.raises(
        ModelInputError,
        match=r"\['qkv'\] name no linear layer.*\['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]",
    ):
        memory_estimate(spec, load_config(base[1], spec.storage))


@pytest.mark.slow  # ~2 min each on 2 cores: two runs and a killed worker (`make test-slow`, CI)
@pytest.mark.parametrize("quantize", [None, "nf4"], ids=["lora", "qlora"])
def test_lora_with_the_tower_in_bf16_zero1_resumes_bit_exactly_after_a_killed_worker(
    ray_local, base, tmp_path, quantize
):
    data, model = base
    common = dict(
        init_from=model,
        lora={"r": R, "alpha": ALPHA, "quantize": quantize},
        max_steps=8,
        checkpoint_every=4,
        max_failures=2,
        trainable=["projector", "llm", "vision_tower"],
        deepspeed={"zero_stage": 1, "precision": "bf16", "micro_batch_size": 4},
    )
    reference = lora_spec(tmp_path, "reference", data, **common)
    run(reference)
    spec = lora_spec(tmp_path, "killed", data, **common)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run(spec)), daemon=True)
    thread.start()
    deadline, killed = time.monotonic() + 240, None
    while time.monotonic() < deadline and killed is None and thread.is_alive():
        rows = metrics_rows(spec.run_dir)
        if len(rows) > 5:  # past the step-4 checkpoint
            workers = [p.pid for p in actor_processes("RayTrainWorker", ray_local)]
            if workers:
                killed = max(workers)
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    assert killed is not None, "never saw the run pass a checkpoint"
    thread.join(timeout=300)
    assert not thread.is_alive() and result["metrics"]["step"] == 8
    assert losses_by_step(metrics_rows(spec.run_dir)) == losses_by_step(
        metrics_rows(reference.run_dir)
    )
    start, _ = load_model_dir(model)
    merged, _ = load_model_dir(os.path.join(spec.run_dir, "model"))
    tower = [n for n, _ in start.named_parameters() if "vision_tower.encoder.layers.0." in n]
    assert any(
        not torch.equal(start.state_dict()[n], merged.state_dict()[n].to(start.dtype))
        for n in tower
    )
