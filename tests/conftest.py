import os
import secrets
import tempfile

# No hub access on these machines: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Downloads of s3:// model directories go to a per-session cache, not the user's home (set before
# Ray starts, so its workers inherit it).
os.environ.setdefault("STF_CACHE", tempfile.mkdtemp(prefix="stf-cache-"))


def _session_ray_token() -> str:
    """A token file of this test session's, readable by its owner only."""
    path = os.path.join(tempfile.mkdtemp(prefix="stf-token-"), "auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path


# Every Ray the tests start (and every CLI process that joins one) uses Ray's token authentication
# with this session's token, set before anything imports Ray: no test writes ~/.ray/auth_token,
# and a developer's exported RAY_AUTH_MODE=disabled does not turn it off. The tests of stf's own
# defaults give their processes an environment without these.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ["RAY_AUTH_TOKEN_PATH"] = _session_ray_token()

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def tiny():
    """A random tiny model (window 2, 4 MBTF blocks) and its tokenizer."""
    from stf_model import build_tiny

    return build_tiny(seed=0)


@pytest.fixture
def uint8_images():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=gen)
