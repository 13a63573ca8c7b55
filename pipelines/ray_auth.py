"""Ray's token authentication as ``stf`` uses it: the token a client carries to a cluster, the
token of the local Ray ``stf`` starts, and what a refusal by a cluster says.

Ray (2.52+) protects a cluster with one shared token: every gRPC service and the dashboard's HTTP
API (the Jobs API among them) refuse a client without it. Ray looks for the token in
``RAY_AUTH_TOKEN``, then in the file ``RAY_AUTH_TOKEN_PATH`` names, then in ``~/.ray/auth_token``;
``stf`` looks in the same places (after a ``--token-file`` given on the command line), and carries
what it finds whether or not ``RAY_AUTH_MODE=token`` is exported, where Ray's own clients send
nothing unless it is.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import UserError

log = logging.getLogger(__name__)

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"

WHERE_TO_PUT_IT = (
    f"set {TOKEN_ENV}, or {TOKEN_PATH_ENV} to a file holding it, or write it to "
    "~/.ray/auth_token, or pass --token-file PATH (docs/security.md: where a cluster's token is)"
)


class ClusterRefused(UserError):
    """A cluster refused this client: no token, or not the cluster's token."""


@dataclass(frozen=True)
class Token:
    """A cluster token and where it was found (the value never appears in a repr or a log)."""

    value: str = field(repr=False)
    source: str

    def http_headers(self) -> dict[str, str]:
        """The header Ray's dashboard (and its Jobs API) checks."""
        return {"Authorization": f"Bearer {self.value}"}


def default_token_path() -> Path:
    """Ray's default token file, ``~/.ray/auth_token``."""
    return Path.home() / ".ray" / "auth_token"


def find_token(token_file: str | None = None) -> Token | None:
    """The token a client sends: ``token_file``, else Ray's places in Ray's order; None when there
    is none. A file named explicitly (``token_file``, ``RAY_AUTH_TOKEN_PATH``) that cannot be read
    or is empty is an error, as it is for Ray."""
    if token_file:
        return _read(Path(token_file).expanduser(), f"--token-file {token_file}")
    if os.environ.get(TOKEN_ENV, "").strip():
        return Token(os.environ[TOKEN_ENV].strip(), TOKEN_ENV)
    if os.environ.get(TOKEN_PATH_ENV):
        path = os.environ[TOKEN_PATH_ENV]
        return _read(Path(path).expanduser(), f"{TOKEN_PATH_ENV} ({path})")
    default = default_token_path()
    return _read(default, "~/.ray/auth_token") if default.is_file() else None


def _read(path: Path, source: str) -> Token:
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise UserError(f"{source}: cannot read the token file ({err.strerror})") from err
    if not value:
        raise UserError(f"{source}: the token file is empty")
    return Token(value, source)


def refusal(address: str, token: Token | None, detail: str) -> ClusterRefused:
    """The error for a cluster that refused this client (Ray's ``AuthenticationError``)."""
    if token is None:
        return ClusterRefused(
            f"the Ray cluster at {address} requires a token and none was found: {WHERE_TO_PUT_IT}"
        )
    first_line = detail.strip().splitlines()[0] if detail.strip() else "refused"
    return ClusterRefused(
        f"the Ray cluster at {address} refused the token from {token.source} ({first_line}): "
        f"it is not this cluster's token; {WHERE_TO_PUT_IT}"
    )


def auth_disabled() -> bool:
    """Whether the user turned Ray's token authentication off (``RAY_AUTH_MODE=disabled``)."""
    return os.environ.get(MODE_ENV, "").strip().lower() == "disabled"


def prepare_local_token() -> None:
    """Makes sure the local Ray ``stf`` is about to start has a token only its user can read.

    Ray turns token authentication on for a local Ray unless ``RAY_AUTH_MODE`` says otherwise,
    and writes a new token to ``~/.ray/auth_token`` with the process's umask (usually readable by
    every user of the machine). The token is written here first, readable by its owner only, so
    that Ray finds it; an existing one that others can read is reported, not changed.
    """
    if auth_disabled():
        log.warning(
            "%s=disabled: the local Ray runs without token authentication, so any process on "
            "this machine can run code through it; unset %s to keep Ray's token",
            MODE_ENV,
            MODE_ENV,
        )
        return
    if os.environ.get(TOKEN_ENV, "").strip() or os.environ.get(TOKEN_PATH_ENV):
        return  # Ray uses the token the user chose
    path = default_token_path()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another process wrote it first
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        log.info("wrote a new Ray token to %s (readable by you only)", path)
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "%s is readable by other users of this machine (mode %o): whoever reads it can run "
            "code through any Ray that uses it; run chmod 600 %s",
            path,
            mode,
            path,
        )
