"""Typed JSON documents that one job (or process) writes and another reads: the shard manifest,
the batch-inference summary, the evaluation report.

Each is a pydantic model with a ``schema_version`` field; :meth:`Document.read` checks that
version in this one place, before validating, so an output written by another version of this
code is a clear error instead of a missing key deep inside a job.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self

from pipelines.errors import InputError
from pipelines.spec import StorageOptions
from pipelines.storage import read_json, write_json_atomic


class Document(BaseModel):
    """Base of the typed documents. Subclasses declare ``schema_version: Literal[N] = N``, a
    ``KIND`` (for messages) and a ``REMEDY`` (what to do when the version does not match)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KIND: ClassVar[str] = "document"
    REMEDY: ClassVar[str] = "re-run the job that writes it with this version"

    @classmethod
    def schema_version_read(cls) -> int:
        """The one schema version this code reads and writes."""
        return cls.model_fields["schema_version"].default

    @classmethod
    def parse(cls, data: Any, source: str) -> Self:
        """Checks the schema version, then validates; either failure is an
        :class:`~pipelines.errors.InputError` naming the source."""
        found = data.get("schema_version") if isinstance(data, dict) else None
        if found != cls.schema_version_read():
            raise InputError(
                f"{source}: {cls.KIND} schema version {found!r}, this code reads "
                f"{cls.schema_version_read()}; {cls.REMEDY}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise InputError(f"{source} is not a valid {cls.KIND} ({err}); {cls.REMEDY}") from err

    @classmethod
    def read(cls, url: str, storage: StorageOptions) -> Self | None:
        """The document at ``url``, or None when there is none."""
        try:
            data = read_json(url, storage)
        except json.JSONDecodeError as err:
            raise InputError(f"{url} is not JSON ({err}); {cls.REMEDY}") from err
        return None if data is None else cls.parse(data, url)

    def write(self, url: str, storage: StorageOptions) -> None:
        """Writes atomically (readers see the old document or the new one)."""
        write_json_atomic(url, self.model_dump(mode="json"), storage)
