"""Reason codes that only the pipelines raise: reading record files and images from storage.

The model library's codes (a record's structure, decoding image bytes, tokenisation) are in
:data:`stf_model.records.REASONS`; quarantine rows and error rows carry a code from either table,
and :class:`RejectedRecord` accepts both.
"""

from __future__ import annotations

from typing import ClassVar

from stf_model.records import REASONS as LIBRARY_REASONS
from stf_model.records import RecordError

PIPELINE_REASONS: dict[str, str] = {
    "malformed_json": "the line or list element is not valid JSON; fix the JSON",
    "broken_json_list": "a JSON list file breaks here, so the records after it cannot be counted",
    "image_path_escapes_root": "the image path is absolute or leaves the image root ('..')",
    "image_missing": "the image file does not exist under the image root",
    "image_unreadable": "the image file exists but could not be read (permissions, I/O error)",
}
REASONS: dict[str, str] = {**LIBRARY_REASONS, **PIPELINE_REASONS}


class RejectedRecord(RecordError):
    """A record or image a job refuses, with a code from the library's or the pipelines' table."""

    reasons: ClassVar[dict[str, str]] = REASONS
