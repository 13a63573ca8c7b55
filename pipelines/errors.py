"""The errors a user can fix, as one family.

The command line turns a :class:`UserError` (and the model library's own
:class:`~stf_model.errors.ModelInputError`) into one message and exit code 2; every other
exception is a bug and keeps its traceback. The subclasses also derive from the built-in type a
caller would expect (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` still works.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user must fix; the message says what, where, and what to do."""


class SpecError(UserError, ValueError):
    """A spec the user must fix; the message names the file, the key and the problem."""


class InputError(UserError, ValueError):
    """Refused input: data that does not fit the job (wrong shards for the model, duplicate ids,
    a run that cannot fit in memory, a model directory without a tokenizer)."""


class MissingInput(UserError, FileNotFoundError):
    """An input path or URL that does not exist (or holds no usable file)."""


class JobFailed(UserError, RuntimeError):
    """The job ran but its output must not be used (too many bad records, rows unaccounted for);
    what was written is on storage for inspection. The command line exits 1 for these."""


class Unschedulable(UserError):
    """Resources the Ray cluster does not have and cannot get (a GPU on a machine without one);
    the message names what was asked and what the cluster has."""
