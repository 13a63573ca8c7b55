"""Where `stf` finds a cluster's token (Ray's places, in Ray's order, after --token-file), what a
refusal says, and the local token it writes: no Ray needed."""

from __future__ import annotations

import logging
import stat

import pytest

from pipelines.errors import UserError
from pipelines.ray_auth import Token, find_token, prepare_local_token, refusal


@pytest.fixture
def bare(monkeypatch, tmp_path):
    """No token anywhere: the Ray variables unset and HOME an empty folder."""
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path


def _file(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_tokens_are_found_in_rays_order_after_the_command_line(bare, monkeypatch):
    assert find_token() is None
    _file(bare / "home" / ".ray" / "auth_token", "from-home\n")
    assert find_token() == Token("from-home", "~/.ray/auth_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", _file(bare / "elsewhere", " from-path "))
    assert find_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-variable")
    assert find_token() == Token("from-variable", "RAY_AUTH_TOKEN")
    flag = _file(bare / "flag", "from-flag")
    assert find_token(flag) == Token("from-flag", f"--token-file {flag}")


def test_a_named_token_file_that_is_missing_or_empty_is_an_error(bare, monkeypatch):
    with pytest.raises(UserError, match="cannot read the token file"):
        find_token(str(bare / "missing"))
    with pytest.raises(UserError, match="the token file is empty"):
        find_token(_file(bare / "empty", "\n"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(bare / "missing"))
    with pytest.raises(UserError, match=r"RAY_AUTH_TOKEN_PATH \(.*missing\)"):
        find_token()


def test_the_token_never_shows_in_a_repr_or_a_refusal():
    token = Token("s3cr3t-value", "RAY_AUTH_TOKEN")
    assert "s3cr3t" not in repr(token)
    assert token.http_headers() == {"Authorization": "Bearer s3cr3t-value"}
    wrong = str(refusal("http://h:8265", token, "Authentication failed: Forbidden\n\nmore"))
    assert "refused the token from RAY_AUTH_TOKEN (Authentication failed: Forbidden)" in wrong
    assert "s3cr3t" not in wrong
    missing = str(refusal("http://h:8265", None, "Authentication required"))
    assert missing.startswith("the Ray cluster at http://h:8265 requires a token")
    assert "RAY_AUTH_TOKEN" in missing and "--token-file" in missing


def test_the_local_token_is_written_for_its_owner_only(bare):
    prepare_local_token()
    path = bare / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first = path.read_text()
    assert len(first) == 64
    prepare_local_token()  # an existing token is kept
    assert path.read_text() == first


def test_a_token_others_can_read_is_reported_and_left_alone(bare, caplog):
    path = bare / "home" / ".ray" / "auth_token"
    _file(path, "shared")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pipelines.ray_auth"):
        prepare_local_token()
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    assert path.read_text() == "shared" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_chosen_token_or_disabled_auth_writes_nothing(bare, monkeypatch, caplog):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "chosen")
    prepare_local_token()
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with caplog.at_level(logging.WARNING, logger="pipelines.ray_auth"):
        prepare_local_token()
    assert "without token authentication" in caplog.text
    assert not (bare / "home" / ".ray").exists()
