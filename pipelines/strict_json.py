"""JSON as RFC 8259 defines it, for text from users (record files, request bodies).

Python's ``json.loads`` accepts ``NaN`` and ``Infinity``, which are not JSON, and raises
``RecursionError`` (not a parse error) on deeply nested input; both would otherwise escape as
bugs or as values no other JSON reader produces. Here every refusal is one :class:`NotJSON`.
"""

from __future__ import annotations

import json
from typing import Any


class NotJSON(ValueError):
    """The text is not JSON; the message says why and where."""


def _refuse_constant(name: str):
    raise NotJSON(f"{name} is not a JSON number (RFC 8259)")


def loads(text: str | bytes | bytearray) -> Any:
    """``json.loads`` without ``NaN``/``Infinity`` and with nesting too deep to parse refused.

    Raises NotJSON for anything that is not JSON (bad syntax, bad UTF-8, those constants, depth).
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise NotJSON(f"{err.msg} at line {err.lineno} column {err.colno}") from err
    except UnicodeDecodeError as err:
        raise NotJSON(f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except RecursionError:
        raise NotJSON("nested too deeply to parse") from None
