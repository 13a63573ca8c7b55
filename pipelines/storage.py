"""Local and ``s3://`` paths through one interface (fsspec; s3fs for S3).

Jobs keep URLs as strings (``/data/x``, ``s3://bucket/x``) and resolve them here; the same code
then runs on a laptop and on a cluster reading from object storage.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import fsspec

from pipelines.errors import MissingInput
from pipelines.spec import StorageOptions, absolute


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def filesystem(url: str, storage: StorageOptions) -> fsspec.AbstractFileSystem:
    """The filesystem a URL lives on. fsspec caches instances, so repeated calls are cheap."""
    if is_s3(url):
        import s3fs

        return s3fs.S3FileSystem(**storage.s3fs_options())
    return fsspec.filesystem("file")


def fs_path(url: str) -> str:
    """The path fsspec expects: ``bucket/key`` for S3, an absolute path for local files."""
    return url[len("s3://") :] if is_s3(url) else absolute(url)


def to_url(url_like: str, path: str) -> str:
    """Inverse of :func:`fs_path` for a path found on the same filesystem as ``url_like``."""
    return f"s3://{path}" if is_s3(url_like) else path


def join(base: str, *parts: str) -> str:
    """Joins URL parts with ``/`` (``os.path.join`` would mangle ``s3://``)."""
    if is_s3(base):
        return "s3://" + posixpath.join(base[len("s3://") :], *parts)
    return os.path.join(base, *parts)


class InputFile(NamedTuple):
    """A file an input pattern matched: its URL, size, and a version that changes when the file
    does (local: modification time in ns; S3: the ETag)."""

    url: str
    size: int
    version: str


def expand_inputs(patterns: list[str], storage: StorageOptions) -> list[InputFile]:
    """Expands files and globs into :class:`InputFile`\\ s sorted by URL; a pattern matching
    nothing is an error, so a typo never silently reads less data. A file that exists is taken
    as named, even with glob characters in its name (``photos [2023].jsonl``)."""
    found: dict[str, InputFile] = {}
    for pattern in patterns:
        fs = filesystem(pattern, storage)
        path = fs_path(pattern)
        if has_magic(path) and fs.isfile(path):
            path = glob.escape(path)
        matches = fs.glob(path, detail=True)
        files = _matching_files(fs, matches, path.endswith("**"), set())
        if not files:
            raise MissingInput(f"input {pattern!r} matches no file")
        for path, info in files.items():
            url = to_url(pattern, path)
            found[url] = InputFile(url, int(info.get("size") or 0), _version(info))
    return [found[url] for url in sorted(found)]


def _matching_files(
    fs: Any, entries: dict[str, dict[str, Any]], recursive: bool, linked: set[str]
) -> dict[str, dict[str, Any]]:
    """The files among ``entries`` (a glob's or a find's listing), and symbolic links: fsspec
    lists a link as "other", and a folder of links (a Hugging Face snapshot) would read as
    empty. A link to a file counts as one (a broken one too, so that reading it fails loudly,
    never silently skipped); when ``recursive`` (``**``), a linked folder's files are listed,
    each folder once."""
    files = {}
    for path, info in entries.items():
        if info.get("type") == "file" or info.get("islink") and not os.path.isdir(path):
            files[path] = info
        elif info.get("islink") and recursive and os.path.realpath(path) not in linked:
            linked.add(os.path.realpath(path))
            inside = fs.find(path, detail=True)  # glob does not list under a linked folder
            files.update(_matching_files(fs, inside, recursive, linked))
    return files


def has_magic(path: str) -> bool:
    """Whether ``path`` has glob characters (``*``, ``?``, ``[``)."""
    return any(c in path for c in "*?[")


def _version(info: dict[str, Any]) -> str:
    """What changes when a file is rewritten, from fsspec's listing: a same-size edit keeps the
    size, not the S3 ETag or the local modification time."""
    for key in ("ETag", "etag", "mtime", "LastModified"):
        if info.get(key) is not None:
            value = info[key]
            return str(int(value * 1e9)) if isinstance(value, float) else str(value)
    return ""


def arrow_filesystem(url: str, storage: StorageOptions):
    """pyarrow's view of the filesystem ``url`` lives on, for Ray APIs that take one (Ray Train's
    storage); None for local paths (pyarrow's local filesystem)."""
    if not is_s3(url):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(filesystem(url, storage)))


def read_many(urls: list[str], storage: StorageOptions) -> dict[str, bytes | Exception]:
    """The bytes of every URL, or the error reading it (``FileNotFoundError`` when missing); S3
    reads run concurrently (one round of requests for the list, not one per file)."""
    wanted = sorted(set(urls))
    result: dict[str, bytes | Exception] = {}
    remote = [u for u in wanted if is_s3(u)]
    if remote:
        # Escaped: cat expands glob characters, and "brack[1].jpg" would match "brack1.jpg".
        paths = [glob.escape(fs_path(u)) for u in remote]
        got = filesystem(remote[0], storage).cat(paths, on_error="return")
        result.update({u: got.get(fs_path(u), FileNotFoundError(u)) for u in remote})
    for url in (u for u in wanted if not is_s3(u)):
        try:
            with open(fs_path(url), "rb") as f:
                result[url] = f.read()
        except (OSError, ValueError) as err:  # ValueError: a name the OS cannot take
            result[url] = err
    return result


def write_json_atomic(url: str, payload: Any, storage: StorageOptions) -> None:
    """Writes JSON so that readers see the old file or the new one, never half of one: a local
    file is written aside and renamed over; an S3 object appears whole on one PUT."""
    data = json.dumps(payload, indent=2, sort_keys=False).encode()
    fs = filesystem(url, storage)
    path = fs_path(url)
    if is_s3(url):
        fs.pipe_file(path, data)
        fs.invalidate_cache(posixpath.dirname(path))
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(url: str, text: str, storage: StorageOptions) -> None:
    """Writes a small text file (parent folders created); one PUT on S3."""
    write_bytes(url, text.encode(), storage)


def write_lines(url: str, lines: Iterable[str], storage: StorageOptions) -> None:
    """Writes ``lines`` (each ending in its own newline) as they come, so that a file of a
    million lines never sits whole in memory; readers see the old file or the new one: a local
    file is written aside and renamed over, an S3 object appears when its multipart upload
    completes (and an upload that fails part way is aborted, never completed)."""
    fs = filesystem(url, storage)
    path = fs_path(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if is_s3(url):
        f = fs.open(path, "wb")
        try:
            for line in lines:
                f.write(line.encode())
        except BaseException:
            f.discard()  # aborts the multipart upload: nothing appears
            f.closed = True  # so that closing it later does not complete it
            raise
        f.close()
        fs.invalidate_cache(posixpath.dirname(path))
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes(url: str, data: bytes, storage: StorageOptions) -> None:
    """Writes a small file (parent folders created); one PUT on S3."""
    fs = filesystem(url, storage)
    path = fs_path(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    if is_s3(url):
        fs.invalidate_cache(posixpath.dirname(path))


def upload_dir(local_dir: str, url: str, storage: StorageOptions) -> None:
    """Copies a local directory to ``url``, replacing a local target; S3 objects are uploaded
    over whatever the prefix holds."""
    if not is_s3(url):
        # Copied beside the target, then swapped in: a copy that fails (a full disk) leaves the
        # old directory as it was.
        target = fs_path(url).rstrip("/")
        staged, old = (
            f"{target}.staged-{uuid.uuid4().hex[:8]}",
            f"{target}.old-{uuid.uuid4().hex[:8]}",
        )
        shutil.copytree(local_dir, staged)
        if os.path.exists(target):
            os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    fs = filesystem(url, storage)
    fs.put(local_dir.rstrip("/") + "/", fs_path(url).rstrip("/") + "/", recursive=True)
    fs.invalidate_cache()


def read_json(url: str, storage: StorageOptions) -> Any | None:
    """The parsed JSON at ``url``, or None when there is no such file."""
    fs = filesystem(url, storage)
    try:
        with fs.open(fs_path(url), "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def remove_file(url: str, storage: StorageOptions) -> None:
    """Deletes one file if it exists."""
    fs = filesystem(url, storage)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(fs_path(url))
    fs.invalidate_cache()


def remove_tree(url: str, storage: StorageOptions) -> None:
    """Deletes a directory (prefix) and everything under it, if it exists."""
    fs = filesystem(url, storage)
    path = fs_path(url)
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache()


def local_copy(
    url: str,
    storage: StorageOptions,
    patterns: tuple[str, ...] = ("*",),
    cache_root: str | None = None,
) -> str:
    """A local directory with the files of ``url`` whose names match ``patterns``. Local paths
    are returned unchanged; S3 prefixes are downloaded into a cache keyed by the listing (names,
    sizes, ETags), so a changed object is fetched again and an unchanged one only once."""
    if not is_s3(url):
        return fs_path(url)
    fs = filesystem(url, storage)
    prefix = fs_path(url).rstrip("/") + "/"
    fs.invalidate_cache(prefix.rstrip("/"))
    listing = {
        path[len(prefix) :]: info
        for path, info in fs.find(prefix, detail=True).items()
        if any(fnmatch.fnmatch(posixpath.basename(path), p) for p in patterns)
    }
    if not listing:
        raise MissingInput(f"{url} has no files matching {', '.join(patterns)}")
    identity = sorted((rel, info.get("size"), info.get("ETag")) for rel, info in listing.items())
    key = hashlib.sha256(repr((url, identity)).encode()).hexdigest()[:16]
    root = cache_root or os.path.join(
        os.environ.get("STF_CACHE", os.path.expanduser("~/.cache/stf")), "s3"
    )
    target = os.path.join(root, key)
    if not os.path.exists(os.path.join(target, ".complete")):
        for rel in listing:
            dest = os.path.join(target, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            fs.get_file(prefix + rel, f"{dest}.part")
            os.replace(f"{dest}.part", dest)
        open(os.path.join(target, ".complete"), "w").close()
    return target
