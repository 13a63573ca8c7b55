"""Real model layouts end to end: `stf init` assembles LLaVA-STF from base LLMs and towers saved as
their public releases are (LLaMA/Vicuna and Qwen2; a full CLIPModel and a SigLIP vision model),
locally and from S3; then the LLaMA + CLIP model goes through preprocess -> finetune on 2
workers -> `stf serve` and the `openai` client (and, in `make test-slow`, pretraining), and the
Qwen2 model with its own ChatML template through preprocess and finetuning."""

import base64
import io
import json
import socket

import pytest
import torch
from PIL import Image
from support.base_models import save_clip, save_llama, save_qwen2, save_siglip
from transformers import AutoImageProcessor, AutoTokenizer

from pipelines.cli import main
from pipelines.init.job import run as init
from pipelines.init.spec import InitSpec
from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run as preprocess
from pipelines.synth.corpus import write_corpus
from pipelines.train import TrainSpec
from pipelines.train.job import run as train
from stf_model import STFForConditionalGeneration, load_model_dir

TEXTS = ["What color is the shape at the top left?", "two shapes: a red circle! é 😀"]
PAIRS = [("llama", "clip"), ("llama", "siglip"), ("qwen2", "clip"), ("qwen2", "siglip")]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {
        "llama": save_llama(root / "llama"),
        "qwen2": save_qwen2(root / "qwen2"),
        "clip": save_clip(root / "clip"),
        "siglip": save_siglip(root / "siglip"),
    }


def init_args(llm, tower, output, *extra):
    sets = [
        f"llm={llm}",
        f"vision_tower={tower}",
        f"output={output}",
        "vision_feature_layer=[-2,2]",
    ]
    return ["init", *(arg for value in [*sets, *extra] for arg in ("--set", value))]


def base_weights(llm_dir, tower_dir) -> dict[str, torch.Tensor]:
    """The base parts' tensors, keyed as in our model (the new <image> embedding row aside)."""
    from stf_model.assemble import load_llm, load_tower

    llm, _ = load_llm(llm_dir, torch.float32)
    tower, _ = load_tower(tower_dir, torch.float32)
    out = {f"model.language_model.{k}": v for k, v in llm.model.state_dict().items()}
    out.update({f"model.vision_tower.{k}": v for k, v in tower.state_dict().items()})
    return out


@pytest.mark.parametrize("llm,tower", PAIRS)
def test_init_keeps_the_parts_the_tokenizer_and_the_image_processor(
    bases, tmp_path, llm, tower, capsys
):
    out = tmp_path / "model"
    assert main(init_args(bases[llm], bases[tower], out, "dtype=float32")) == 0
    assert "36 vision tokens per image" in capsys.readouterr().out
    model = STFForConditionalGeneration.from_pretrained(out)
    ours = model.state_dict()
    for key, value in base_weights(bases[llm], bases[tower]).items():
        if key.endswith("embed_tokens.weight"):  # grown by one row for <image>, or not at all
            value, ours_value = value, ours[key][: value.shape[0]]
        else:
            ours_value = ours[key]
        assert torch.equal(ours_value, value), key
    base_tok, our_tok = (
        AutoTokenizer.from_pretrained(bases[llm]),
        AutoTokenizer.from_pretrained(out),
    )
    for text in TEXTS:
        assert our_tok(text)["input_ids"] == base_tok(text)["input_ids"], text
    assert our_tok.convert_tokens_to_ids("<image>") == model.config.image_token_index
    theirs, mine = (
        AutoImageProcessor.from_pretrained(bases[tower]),
        AutoImageProcessor.from_pretrained(out),
    )
    assert list(mine.image_mean) == list(theirs.image_mean) == model.config.image_mean
    assert list(mine.image_std) == list(theirs.image_std) == model.config.image_std
    assert mine.crop_size["height"] == model.config.vision_config.image_size == 48
    assert (out / "stf-init.yaml").exists()


def test_init_writes_bfloat16_by_default_and_refuses_impossible_fusion(bases, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(init_args(bases["llama"], bases["siglip"], out)) == 0
    assert STFForConditionalGeneration.from_pretrained(out).dtype == torch.bfloat16
    assert main(init_args(bases["llama"], bases["clip"], tmp_path / "x", "stf_window=5")) == 2
    assert "grid 12x12 is not divisible by stf_window 5" in capsys.readouterr().err
    published = ["init", "--set", f"llm={bases['llama']}", "--set", f"vision_tower={bases['clip']}"]
    assert main([*published, "--set", f"output={tmp_path / 'y'}"]) == 2  # 21, 18, ...: 4 blocks
    assert "valid indices are -5..4" in capsys.readouterr().err
    assert main(init_args(bases["llama"], bases["llama"], tmp_path / "z")) == 2
    assert "not a vision tower" in capsys.readouterr().err


def test_init_never_writes_over_its_inputs_or_a_folder_that_is_not_a_model(bases, tmp_path, capsys):
    llm = bases["llama"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    for output, why in (
        (llm, "is, holds or lies in the input"),
        (llm.parent, "is, holds or lies in the input"),  # the folder holding both bases
        (llm / "sub", "is, holds or lies in the input"),
        (notes, "is not a LLaVA-STF model directory"),
    ):
        assert main(init_args(llm, bases["clip"], output)) == 2, output
        assert why in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "keep me" and (llm / "config.json").exists()
    model = tmp_path / "model"
    assert main(init_args(llm, bases["clip"], model)) == 0
    assert main(init_args(llm, bases["clip"], model, "seed=1")) == 0  # ours: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes"]  # nothing staged left


def test_init_from_and_to_s3(bases, s3_server, tmp_path, monkeypatch):
    from pipelines.spec import StorageOptions
    from pipelines.storage import filesystem, local_copy

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = StorageOptions(endpoint_url=s3_server)
    fs = filesystem("s3://bases", storage)
    fs.mkdir("bases")
    for name in ("qwen2", "siglip"):
        fs.put(str(bases[name]) + "/", f"bases/{name}/", recursive=True)
    spec = InitSpec(
        llm="s3://bases/qwen2",
        vision_tower="s3://bases/siglip",
        output="s3://bases/stf",
        vision_feature_layer=[-2, 2],
        template="llm",
        storage=storage,
    )
    summary = init(spec)
    assert summary.vision_tokens == 36 and summary.tower_type == "siglip_vision_model"
    model, processor = load_model_dir(local_copy("s3://bases/stf", storage))
    assert processor.tokenizer.chat_template.lstrip().startswith("{#- ChatML")
    assert model.config.vision_feature_select_strategy == "full"


# ---- the whole path on Ray ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-corpus")
    write_corpus(root, n=24, seed=5, n_eval=0, width=64, height=48)
    return root


def train_spec(tmp_path, name, data, stage, start, **extra) -> TrainSpec:
    base = dict(
        name=name,
        storage_path=str(tmp_path / "runs"),
        stage=stage,
        data=[data],
        max_steps=3,
        log_every=1,
        checkpoint_every=100,
        deepspeed={"zero_stage": 2, "precision": "bf16", "micro_batch_size": 2},
        optimizer={"lr": 1e-3, "warmup_ratio": 0.0},
        **extra,
    )
    base["init_from" if stage == "finetune" else "model"] = start
    return TrainSpec.model_validate(base)


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def serve_and_ask(model_dir: str) -> str:
    from openai import OpenAI
    from ray import serve

    from pipelines.serve import ServeSpec
    from pipelines.serve.job import run as serve_run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = ServeSpec.model_validate(
        {"model": {"path": model_dir}, "port": port, "deployment": {"num_cpus": 0.5}}
    )
    url = serve_run(spec, blocking=False)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", timeout=60, max_retries=0)
        parts = [
            {
                "type": "image_url",
                "image_url": {"url": _data_url(Image.new("RGB", (64, 48), "red"))},
            },
            {"type": "text", "text": "What color is the shape?"},
        ]
        reply = client.chat.completions.create(
            model=spec.served_model_id, messages=[{"role": "user", "content": parts}], max_tokens=4
        )
        assert reply.usage.prompt_tokens > 36  # the image's 36 vision tokens are counted
        return reply.choices[0].message.content
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def llama_clip(ray_local, bases, corpus, tmp_path_factory):
    """`stf init` of the LLaMA + CLIP bases, and the corpus preprocessed for both stages with its
    tokenizer: ``(model directory, {"pretrain": shards, "finetune": shards})``."""
    root = tmp_path_factory.mktemp("llama-clip")
    model_dir = str(root / "stf")
    init(
        InitSpec(
            llm=str(bases["llama"]),
            vision_tower=str(bases["clip"]),
            output=model_dir,
            vision_feature_layer=[-2, 2],
        )
    )
    shards = {}
    for stage, file, template in (
        ("pretrain", "pretrain.json", "plain"),
        ("finetune", "finetune.jsonl", "vicuna_v1"),
    ):
        shards[stage] = str(root / stage)
        manifest = preprocess(
            PreprocessSpec(
                inputs=[str(corpus / file)],
                output=shards[stage],
                model=model_dir,
                template=template,
            )
        )
        assert manifest.counts.quarantined == 0, manifest.counts.by_reason  # no mask_mismatch
        assert manifest.image.size == 48 and manifest.tokenizer.pad_token_id == 0  # <unk>
    return model_dir, shards


def test_llama_clip_init_preprocess_finetune_serve(llama_clip, tmp_path):
    """Finetuning on two workers, whose ZeRO-2 partitions the Llama layout's parameters across
    them: the LLM and the projector move, the tower stays frozen; then `stf serve` answers."""
    model_dir, shards = llama_clip
    fine = train(train_spec(tmp_path, "fine", shards["finetune"], "finetune", model_dir))
    start = STFForConditionalGeneration.from_pretrained(model_dir).state_dict()
    tuned = STFForConditionalGeneration.from_pretrained(fine.model).state_dict()
    for key, value in start.items():
        if key.startswith("model.vision_tower."):
            assert torch.equal(value, tuned[key]), key
    for key in ("lm_head.weight", "model.multi_modal_projector.linear_2.weight"):
        assert not torch.equal(start[key], tuned[key]), key
    config = json.loads((tmp_path / "runs" / "fine" / "model" / "config.json").read_text())
    assert config["text_config"]["model_type"] == "llama"
    assert isinstance(serve_and_ask(fine.model), str)


@pytest.mark.slow  # ~20 s on 2 cores: the tiny model's pretraining test checks the same in `make test`
def test_llama_clip_pretrain_moves_only_the_projector(llama_clip, tmp_path):
    model_dir, shards = llama_clip
    one = {"scaling": {"num_workers": 1}}
    pre = train(train_spec(tmp_path, "pre", shards["pretrain"], "pretrain", model_dir, **one))
    start = STFForConditionalGeneration.from_pretrained(model_dir).state_dict()
    after = STFForConditionalGeneration.from_pretrained(pre.model).state_dict()
    for key, value in start.items():
        same = torch.equal(value, after[key])
        assert same != key.startswith("model.multi_modal_projector."), key  # only it moved


# ~24 s on 2 cores: `make test` keeps the Llama + CLIP run end to end; the Qwen2 + SigLIP model
# is assembled and its ChatML masks checked in tests/library/test_assemble.py.
@pytest.mark.slow
def test_qwen2_with_its_own_chatml_template_preprocesses_and_finetunes(
    ray_local, bases, corpus, tmp_path
):
    model_dir = str(tmp_path / "stf")
    init(
        InitSpec(
            llm=str(bases["qwen2"]),
            vision_tower=str(bases["siglip"]),
            output=model_dir,
            vision_feature_layer=[-2, 2],
            template="llm",
        )
    )
    data = str(tmp_path / "shards")
    manifest = preprocess(
        PreprocessSpec(
            inputs=[str(corpus / "finetune.jsonl")], output=data, model=model_dir, template="llm"
        )
    )
    assert manifest.counts.quarantined == 0, manifest.counts.by_reason
    summary = train(
        train_spec(tmp_path, "qwen", data, "finetune", model_dir, scaling={"num_workers": 1})
    )
    assert summary.metrics["step"] == 3
    model, processor = load_model_dir(summary.model)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
