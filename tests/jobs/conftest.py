"""Servers the pipeline tests share: one local Ray and one S3 protocol server per session, on
127.0.0.1 only, each stopped at the end."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray for the whole session, started as `stf` starts one (loopback only, the
    session's token); yields its GCS address so a second driver (a CLI subprocess, which inherits
    the environment that makes it look for Ray on loopback) can join it."""
    import shutil
    import tempfile

    import ray

    from pipelines.ray_env import start_local_ray

    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths have a length limit
    start_local_ray(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random model (seed 0) saved as a model folder: what the tests that load a model
    read (none writes into it)."""
    from stf_model import build_tiny, save_model_dir

    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model_dir(*build_tiny(seed=0), path)
    return str(path)


@pytest.fixture(scope="session")
def shards(ray_local, tmp_path_factory) -> dict[str, str]:
    """One synthetic corpus (48 images, seed 4) preprocessed per template, 16 rows a shard:
    ``{"pretrain": captions with `plain`, "finetune": conversations with `vicuna_v1`}``. What
    the training tests read (none writes into them)."""
    from pipelines.preprocess import PreprocessSpec
    from pipelines.preprocess.job import run as preprocess
    from pipelines.synth.corpus import write_corpus

    root = tmp_path_factory.mktemp("shards")
    write_corpus(root / "corpus", n=48, seed=4, n_eval=0)
    out = {}
    for name, file, template in (
        ("pretrain", "pretrain.json", "plain"),
        ("finetune", "finetune.jsonl", "vicuna_v1"),
    ):
        out[name] = str(root / name)
        spec = PreprocessSpec(
            inputs=[str(root / "corpus" / file)],
            output=out[name],
            template=template,
            rows_per_shard=16,
        )
        preprocess(spec)
    return out


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 protocol server on 127.0.0.1 (a real HTTP endpoint, not an in-process mock);
    yields its endpoint URL and stops it at the end."""
    from support.moto_s3 import running_moto

    with running_moto() as endpoint:
        yield endpoint


def pytest_collection_modifyitems(config, items):
    """Starts installing Chromium in the background when a browser test is going to run."""
    if any("browser" in item.fixturenames for item in items):
        from support.browser import start_chromium_install

        start_chromium_install()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Chromium driven by Selenium for the session; the tests that use it skip, with
    the reason, where Chromium cannot be installed."""
    from support.browser import open_chromium, wait_for_chromium

    found = wait_for_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    session = open_chromium(*found, downloads=str(tmp_path_factory.mktemp("downloads")))
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory):
    """Where browser tests save their screenshots: $STF_SCREENSHOT_DIR (to refresh the README's
    pictures) or a temporary folder."""
    from pathlib import Path

    folder = os.environ.get("STF_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("screenshots")
