"""The library's one user-error type.

A ``ValueError`` raised inside torch or transformers is a bug to be shown with its traceback; a
config, checkpoint or name that the caller must fix is a :class:`ModelInputError`, whose message
says what is wrong and what to do. Front ends (the ``stf`` command line) turn only this type, and
their own user errors, into a one-line message.
"""

from __future__ import annotations


class ModelInputError(ValueError):
    """An impossible config (window, blocks, grid), a checkpoint that does not match the model it
    describes, or an unknown preset / template / stage / aspect name."""


__all__ = ["ModelInputError"]
