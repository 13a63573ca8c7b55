"""The autoscaling path on one machine: Ray's AutoscalingCluster (fake worker nodes as local
processes, the real autoscaler) starts with no workers; a tiny train job whose workers need a
resource only the worker node type has (``stf_gpu``, standing in for GPUs) makes the autoscaler add
nodes; the job finishes; the idle nodes are released.

Marked ``slow`` (about 2-3 minutes) and run by ``make test-slow``. AutoscalingCluster runs
``ray stop --force`` on start and shutdown, which stops every Ray on the machine, so this test
refuses to run next to another Ray in the same session.
"""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow

WORKER_TYPE = "gpu-standin"


def _cluster(idle_timeout_minutes: float):
    from ray.cluster_utils import AutoscalingCluster

    class LocalAutoscalingCluster(AutoscalingCluster):
        # Ray 2.60's wheel does not ship the fake provider's example.yaml that
        # AutoscalingCluster._generate_config reads; this is the same shape, written out.
        def _generate_config(
            self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs
        ):
            config = {
                "cluster_name": "stf-fake",
                "max_workers": 4,
                "provider": {
                    "type": "fake_multinode",
                    "use_node_id_as_ip": True,
                    "disable_node_updaters": True,
                    "disable_launch_config_check": True,
                },
                "available_node_types": {
                    **worker_node_types,
                    "ray.head.default": {
                        "resources": head_resources,
                        "node_config": {},
                        "max_workers": 0,
                    },
                },
                "head_node_type": "ray.head.default",
                "auth": {},
                "upscaling_speed": 1.0,
                "docker": {},
                "initialization_commands": [],
                "setup_commands": [],
                "head_setup_commands": [],
                "worker_setup_commands": [],
                "head_start_ray_commands": [],
                "worker_start_ray_commands": [],
                "file_mounts": {},
                "cluster_synced_files": [],
                "file_mounts_sync_continuously": False,
                "rsync_exclude": [],
                "rsync_filter": [],
            }
            config.update(config_kwargs)
            return config

    return LocalAutoscalingCluster(
        head_resources={"CPU": 1},
        worker_node_types={
            WORKER_TYPE: {
                "resources": {"CPU": 1, "stf_gpu": 1, "object_store_memory": 200 * 1024 * 1024},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            }
        },
        idle_timeout_minutes=idle_timeout_minutes,
    )


def _alive_workers(ray) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("stf_gpu"))


def test_train_job_scales_gpu_standin_workers_up_from_zero_and_back(tmp_path):
    import ray

    if ray.is_initialized():
        pytest.skip("another Ray runs in this session; AutoscalingCluster would stop it")
    from pipelines.preprocess import PreprocessSpec
    from pipelines.preprocess.job import run as preprocess
    from pipelines.synth import write_corpus
    from pipelines.train import TrainSpec
    from pipelines.train.driver import run as train

    write_corpus(tmp_path / "corpus", n=24, seed=5, n_eval=0)
    cluster = _cluster(idle_timeout_minutes=0.2)
    cluster.start()
    try:
        ray.init(address="auto", log_to_driver=False)
        assert _alive_workers(ray) == 0  # starts with no worker nodes
        preprocess(
            PreprocessSpec(
                inputs=[str(tmp_path / "corpus" / "finetune.jsonl")],
                output=str(tmp_path / "shards"),
                workers=1,
            )
        )
        assert _alive_workers(ray) == 0  # CPU work ran on the head
        spec = TrainSpec(
            name="scaled",
            storage_path=str(tmp_path / "runs"),
            stage="finetune",
            data=[str(tmp_path / "shards")],
            max_steps=2,
            checkpoint_every=100,
            log_every=1,
            scaling={"num_workers": 2, "resources_per_worker": {"CPU": 1, "stf_gpu": 1}},
            deepspeed={"zero_stage": 2, "precision": "fp32", "micro_batch_size": 2},
        )
        summary = train(spec)
        assert summary.metrics["step"] == 2
        assert (tmp_path / "runs" / "scaled" / "model" / "model.safetensors").exists()
        launched = [n for n in ray.nodes() if n["Resources"].get("stf_gpu")]
        assert len(launched) == 2, "the autoscaler should have added one node per worker"
        deadline = time.monotonic() + 180
        while _alive_workers(ray) and time.monotonic() < deadline:
            time.sleep(2)
        assert _alive_workers(ray) == 0, "idle worker nodes were not released"
    finally:
        ray.shutdown()
        cluster.shutdown()
