"""`stf train` on a real local Ray with 2 CPU workers and real DeepSpeed (gloo): loss falls under
ZeRO-1 and ZeRO-2, the first ZeRO-2 step equals a plain PyTorch step, pretraining freezes what it
should, runs resume by name, a killed worker is replaced, and the export reloads and generates."""

import json
import math
import os
import signal
import struct
import threading
import time

import pytest
import torch
import yaml
from PIL import Image
from support.jobkill import actor_processes, kill_cli_job_when
from support.outage import S3Outage
from support.run_metrics import losses_by_step, metrics_rows

from pipelines.models import load_config
from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run as preprocess
from pipelines.train import TrainSpec
from pipelines.train.job import run
from pipelines.train.model import build_model
from pipelines.train.plan import build_plan
from pipelines.train.run_folder import parse_metrics
from stf_model import STFForConditionalGeneration, load_model_dir
from stf_model.collate import collate

pytestmark = pytest.mark.usefixtures("ray_local")


def spec_for(tmp_path, name, data, **overrides):
    base = dict(
        name=name,
        storage_path=str(tmp_path / "runs") if tmp_path else None,
        stage="pretrain",
        data=[data],
        deepspeed={"zero_stage": 2, "precision": "fp32", "micro_batch_size": 4},
        log_every=1,
        checkpoint_every=5,
        epochs=10,  # the tiny corpus gives 6 steps per epoch; max_steps ends each run
    )
    base.update(overrides)
    return TrainSpec.model_validate(base)


def _lines(path):
    with open(path) as f:
        return len(f.read().splitlines())


def metrics(spec):
    return metrics_rows(spec.run_dir)


def assert_same_trajectory(spec, reference) -> None:
    """The run's loss at every step equals, to the bit, that of ``reference``: an uninterrupted
    run of the same data and settings. Any row skipped or seen twice after a restore would
    change the weights and every loss from there on."""
    assert losses_by_step(metrics(spec)) == losses_by_step(metrics(reference))


def pretrain(tmp_path, shards, zero_stage):
    spec = spec_for(
        tmp_path,
        f"z{zero_stage}",
        shards["pretrain"],
        max_steps=12,
        deepspeed={"zero_stage": zero_stage, "precision": "fp32", "micro_batch_size": 4},
    )
    return spec, run(spec)


@pytest.fixture(scope="module")
def pretrained(shards, tmp_path_factory):
    """One 12-step ZeRO-2 pretraining run, read by several tests (and finetuned from)."""
    return pretrain(tmp_path_factory.mktemp("pretrained"), shards, zero_stage=2)


def tensorboard_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``: tag -> [(step, value)].
    Read with tensorboardX's protobuf classes; the files are TFRecords (length, its CRC, the
    event, its CRC), which tensorboardX writes but has no reader for."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(f for f in files if "tfevents" in f):
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            at = 0
            while at < len(data):
                (length,) = struct.unpack("<Q", data[at : at + 8])
                event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
                at += 12 + length + 4
                for value in event.summary.value:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def check_loss_falls_and_only_the_projector_moved(spec, summary):
    rows = metrics(spec)
    assert [r.step for r in rows] == list(range(1, 13))
    losses = [r.loss for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    assert summary.metrics["step"] == 12
    for key in ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "memory_gb"):
        assert getattr(rows[-1], key) >= 0
    assert os.path.exists(os.path.join(spec.run_dir, "loss.png"))
    scalars = tensorboard_scalars(os.path.join(spec.run_dir, "tensorboard"))
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 13))
    # On CPU there is no peak FLOP/s, so mfu is NaN in the CSV and has no TensorBoard point;
    # every point written is a number.
    assert "train/mfu" not in scalars and math.isnan(rows[-1].mfu)
    assert all(math.isfinite(v) for points in scalars.values() for _, v in points)

    start, _ = build_model(spec)  # the same seed: the weights the run started from
    trained = STFForConditionalGeneration.from_pretrained(summary.model)
    before, after = start.state_dict(), trained.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("model.multi_modal_projector.") for k in moved)


def test_zero2_loss_falls_and_pretrain_freezes_the_llm_and_tower(pretrained):
    check_loss_falls_and_only_the_projector_moved(*pretrained)


@pytest.mark.slow  # a second 12-step run (~40 s); the finetune test trains under ZeRO-1 in `make test`
def test_zero1_loss_falls_and_pretrain_freezes_the_llm_and_tower(shards, tmp_path):
    check_loss_falls_and_only_the_projector_moved(*pretrain(tmp_path, shards, zero_stage=1))


def test_first_zero2_step_equals_a_plain_pytorch_step(tmp_path):
    # The whole corpus is one global batch (2 workers x 2 rows). Every row has the same number of supervised tokens, so the mean of the two workers' losses
    # is the global mean whichever rows each worker gets.
    root = tmp_path / "corpus"
    (root / "images").mkdir(parents=True)
    records = []
    for i, (word, color) in enumerate(
        [("red", "red"), ("circle", "blue"), ("red", "green"), ("circle", "yellow")]
    ):
        Image.new("RGB", (40, 30), color).save(root / "images" / f"{i}.jpg")
        records.append(
            {
                "id": str(i),
                "image": f"images/{i}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>"},
                    {"from": "gpt", "value": word},
                ],
            }
        )
    (root / "c.json").write_text(json.dumps(records))
    data = str(tmp_path / "shards")
    preprocess(PreprocessSpec(inputs=[str(root / "c.json")], output=data, template="plain"))
    spec = spec_for(
        tmp_path,
        "parity",
        data,
        max_steps=1,
        deepspeed={
            "zero_stage": 2,
            "precision": "fp32",
            "micro_batch_size": 2,
            "gradient_clipping": 0.0,
        },
        optimizer={"lr": 1.0, "eps": 1.0, "warmup_ratio": 0.0, "schedule": "constant"},
    )
    summary = run(spec)

    import pyarrow.parquet as pq

    rows = [
        r
        for f in sorted(os.listdir(f"{data}/shards"))
        for r in pq.read_table(f"{data}/shards/{f}").to_pylist()
    ]
    model, _ = build_model(spec)
    model.set_trainable_stage("pretrain")
    model.train()
    batch = collate(
        rows,
        image_token_id=4,
        num_image_tokens=model.config.num_image_tokens,
        pad_token_id=3,
        image_size=48,
    )
    # eps=1 keeps Adam's first step about lr * g instead of lr * sign(g), so a wrongly scaled
    # gradient (a sum over workers instead of a mean) would show.
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1.0, eps=1.0, weight_decay=0.0
    )
    model(**batch).loss.backward()
    optimizer.step()
    trained = STFForConditionalGeneration.from_pretrained(summary.model).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow  # ~75 s on 2 cores: two runs (`make test-slow`, and CI)
def test_rerun_with_the_same_name_resumes_from_the_latest_checkpoint(shards, tmp_path):
    first = spec_for(tmp_path, "resume", shards["pretrain"], max_steps=5, checkpoint_every=5)
    run(first)
    summary = run(first.model_copy(update={"max_steps": 9}))
    steps = [r.step for r in metrics(first)]
    assert steps == list(range(1, 10)), steps  # 1-5, then 6-9 after resuming: never from 1 again
    assert summary.metrics["step"] == 9


@pytest.mark.slow  # ~105 s on 2 cores: a fault test (`make test-slow`, and CI)
def test_a_killed_worker_is_replaced_and_the_run_finishes(ray_local, shards, pretrained, tmp_path):
    spec = spec_for(
        tmp_path, "fault", shards["pretrain"], max_steps=12, checkpoint_every=4, max_failures=2
    )
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run(spec)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    killed = None
    while time.monotonic() < deadline and killed is None and thread.is_alive():
        path = os.path.join(spec.run_dir, "metrics.csv")
        if os.path.exists(path) and os.path.getsize(path) > 0 and _lines(path) > 6:  # past ckpt
            workers = [p.pid for p in actor_processes("RayTrainWorker", ray_local)]
            if workers:
                killed = max(workers)
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    assert killed is not None, "never saw the run reach a checkpoint"
    thread.join(timeout=300)
    assert not thread.is_alive() and result["metrics"]["step"] == 12
    steps = [r.step for r in metrics(spec)]
    assert steps[-1] == 12 and len(steps) > 12  # some steps re-ran after the restore
    assert_same_trajectory(spec, pretrained[0])


def _unregistered_checkpoints(run_dir) -> list[str]:
    """Checkpoint folders in the run directory that Ray Train has not (yet) recorded in its
    snapshot: being written, or torn. Empty while the snapshot itself is being rewritten."""
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            snapshot = json.load(f)
        names = os.listdir(run_dir)
    except (OSError, ValueError):
        return []
    recorded = {c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]}
    folders = [n for n in names if n.startswith("checkpoint_") and not n.endswith(".json")]
    return [n for n in folders if n not in recorded and recorded]


@pytest.mark.slow  # ~90 s on 2 cores: a fault test (`make test-slow`, and CI)
def test_a_job_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(
    shards, pretrained, ray_local, tmp_path
):
    spec = spec_for(tmp_path, "torn", shards["pretrain"], max_steps=12, checkpoint_every=4)
    path = tmp_path / "torn.yaml"
    path.write_text(yaml.safe_dump(spec.resolved()))
    caught: list[str] = []

    def mid_checkpoint() -> bool:
        caught[:] = _unregistered_checkpoints(spec.run_dir)
        return bool(caught)

    kill_cli_job_when(["train", str(path)], ray_local, mid_checkpoint, poll_s=0.002)
    with open(os.path.join(spec.run_dir, "checkpoint_manager_snapshot.json")) as f:
        complete = [c["metrics"]["step"] for c in json.load(f)["checkpoint_results"]]
    killed_at = max(r.step for r in metrics(spec))
    assert complete and killed_at > max(complete), (complete, killed_at)

    summary = run(spec)
    assert summary.metrics["step"] == 12
    steps = [r.step for r in metrics(spec)]
    # The killed run's steps, then the re-run from the step after its last complete checkpoint.
    resumed_from = max(complete) + 1
    assert steps == list(range(1, killed_at + 1)) + list(range(resumed_from, 13)), steps
    assert_same_trajectory(spec, pretrained[0])
    # The folder the kill interrupted is gone: nothing half-written is left to be mistaken for
    # a checkpoint.
    assert not set(caught) & set(os.listdir(spec.run_dir))


@pytest.mark.slow  # ~100 s on 2 cores: a fault test (`make test-slow`, and CI)
def test_s3_going_away_mid_checkpoint_is_ridden_out(shards, pretrained, s3_server, monkeypatch):
    """Data and run directory on S3 (moto); S3 refuses every connection for 8 s from the moment
    the first checkpoint upload starts. The S3 client's retries ride it out: the run, allowed no
    worker failure, finishes with the same losses as one that never saw the outage."""
    from pipelines.spec import StorageOptions
    from pipelines.storage import filesystem

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    keys = {"access_key_id": "testing", "secret_access_key": "testing"}
    direct = filesystem("s3://x", StorageOptions(endpoint_url=s3_server, **keys))
    direct.mkdir("outage")
    direct.put(shards["pretrain"] + "/", "outage/shards/", recursive=True)
    relay = S3Outage(s3_server, trigger=b"PUT /outage/runs/s3/checkpoint_", seconds=8)
    try:
        spec = spec_for(
            None,
            "s3",
            "s3://outage/shards",
            storage_path="s3://outage/runs",
            storage={"endpoint_url": relay.url, **keys},
            max_steps=12,
            checkpoint_every=4,
            max_failures=0,
        )
        summary = run(spec)
        assert relay.outages == 1
    finally:
        relay.close()
    assert summary.metrics["step"] == 12
    with direct.open("outage/runs/s3/metrics.csv", "r") as f:
        rows = parse_metrics(f.read())
    assert losses_by_step(rows) == losses_by_step(metrics(pretrained[0]))
    assert direct.exists("outage/runs/s3/model/model.safetensors")
    direct.rm("outage", recursive=True)


@pytest.mark.slow  # ~25 s on 2 cores: ZeRO-1 finetuning (`make test` finetunes under ZeRO-2 below)
def test_zero1_finetune_trains_the_llm_and_keeps_the_tower_frozen(shards, pretrained, tmp_path):
    pretrained = pretrained[1].model  # the shared pretraining run's export
    fine = spec_for(
        tmp_path,
        "fine",
        shards["finetune"],
        stage="finetune",
        init_from=pretrained,
        max_steps=3,
        optimizer={"lr": 1e-3},
        deepspeed={"zero_stage": 1, "precision": "fp32", "micro_batch_size": 4},
    )
    summary = run(fine)
    model, processor = load_model_dir(summary.model)
    start = STFForConditionalGeneration.from_pretrained(pretrained)
    assert not torch.equal(
        model.model.language_model.layers[0].mlp.up_proj.weight,
        start.model.language_model.layers[0].mlp.up_proj.weight,
    )
    assert torch.equal(
        model.model.vision_tower.encoder.layers[0].mlp.fc1.weight,
        start.model.vision_tower.encoder.layers[0].mlp.fc1.weight,
    )
    assert_generates(model, processor)


def assert_generates(model: STFForConditionalGeneration, processor) -> None:
    """An exported model, reloaded with its processor, answers an image prompt."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=Image.new("RGB", (96, 72), "red"), text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_a_finetune_with_the_tower_unfrozen_trains_all_three_under_zero2_and_exports(
    shards, pretrained, tmp_path
):
    """The finetune shards mix text-only and image micro-batches, so ranks differ in what their
    batch reaches; with the tower trainable, ZeRO-2 must still reduce the same tensors. The LLM,
    the tower (at its own rate, with gradient checkpointing) and the projector all move, and the
    export reloads and generates. (A default finetune keeps the tower frozen: the Llama + CLIP
    end-to-end test checks that, and the ZeRO-1 finetune test in `make test-slow`.)"""
    start = pretrained[1].model
    spec = spec_for(
        tmp_path,
        "tower",
        shards["finetune"],
        stage="finetune",
        init_from=start,
        max_steps=8,
        trainable=["projector", "llm", "vision_tower"],
        optimizer={"lr": 1e-3, "vision_tower_lr": 1e-4},
        deepspeed={
            "zero_stage": 2,
            "precision": "fp32",
            "micro_batch_size": 4,
            "gradient_checkpointing": True,
        },
    )
    summary = run(spec)
    assert summary.metrics["step"] == 8
    before = STFForConditionalGeneration.from_pretrained(start).state_dict()
    model, processor = load_model_dir(summary.model)
    after = model.state_dict()
    for key in before:
        unused = key.startswith(
            ("model.vision_tower.encoder.layers.5.", "model.vision_tower.post_")
        )
        if key.startswith("model.vision_tower.") and "weight" in key:
            assert torch.equal(before[key], after[key]) == unused, key
    for part in (
        "model.language_model.layers.0.mlp.up_proj.weight",
        "lm_head.weight",
        "model.multi_modal_projector.linear_1.weight",
    ):
        assert not torch.equal(before[part], after[part]), part
    rows = metrics(spec)
    assert [r.step for r in rows] == list(range(1, 9))
    assert_generates(model, processor)


def test_preflight_refuses_a_run_that_cannot_fit(shards, tmp_path):
    spec = spec_for(tmp_path, "big", shards["pretrain"], preflight={"memory_gb": 0.0001})
    with pytest.raises(ValueError, match="pre-flight: ZeRO-2 fp32 on 2 workers"):
        run(spec)


def test_the_plan_estimates_the_decoded_size_of_the_shards(shards, tmp_path):
    """The size that decides whether the data is cached comes from the manifests alone; it is
    within a quarter of what the rows take once read into Arrow."""
    import pyarrow.parquet as pq

    both = [shards["pretrain"], shards["finetune"]]
    spec = spec_for(tmp_path, "size", shards["pretrain"]).model_copy(update={"data": both})
    plan = build_plan(spec, load_config(spec.start_from, spec.storage, spec.model_overrides))
    decoded = sum(pq.read_table(url).nbytes for url in plan.shard_urls)
    assert 0.75 * decoded < plan.data_bytes < 1.25 * decoded, (plan.data_bytes, decoded)


@pytest.mark.slow  # ~30 s on 2 cores: one more 12-step run
def test_data_read_from_the_shards_every_epoch_trains_as_the_cached_data_does(
    shards, pretrained, tmp_path
):
    """The tiny corpus is under ``cache_data_gb``, so ``pretrained`` read it once into the
    object store; read from the files every epoch instead, the run takes the same rows in the
    same order: the same loss at every step."""
    reference, _ = pretrained
    spec = reference.model_copy(update={"storage_path": str(tmp_path), "cache_data_gb": 0})
    run(spec)
    assert_same_trajectory(spec, reference)
