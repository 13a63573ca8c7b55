"""JSON as RFC 8259 defines it, for text from users (record files, request bodies).

Python's ``json.loads`` accepts ``NaN`` and ``Infinity``, turns numbers too large for a double
(``1e400``) into infinity, accepts ``"\\ud83d"`` (half of a UTF-16 surrogate pair, which is not
Unicode text: tokenizers, Arrow and the file system all refuse it later), raises a bare
``ValueError`` on integers over Python's 4,300-digit limit, and ``RecursionError`` (not a parse
error) on deeply nested input; each would otherwise escape as a bug, or as a value no other JSON
reader produces. Here every refusal is one :class:`NotJSON`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

from pipelines.errors import InputError


class NotJSON(ValueError):
    """The text is not JSON; the message says why and where."""


def _refuse_constant(name: str):
    raise NotJSON(f"{name} is not a JSON number (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJSON(f"{text} is out of range for a 64-bit number")
    return value


# Only text holding a surrogate, escaped (\uD83D) or raw, can decode to a lone one.
_ESCAPE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAY_HOLD_SURROGATE = re.compile(f"{_ESCAPE}|{_LONE_SURROGATE.pattern}")
_MAY_HOLD_SURROGATE_BYTES = re.compile(_ESCAPE.encode())


def loads(text: str | bytes | bytearray) -> Any:
    """``json.loads`` without ``NaN``/``Infinity``/out-of-range numbers, lone surrogates, and
    nesting too deep to parse.

    Raises NotJSON for anything that is not JSON (bad syntax, bad UTF-8, those constants, depth,
    integers too long to convert) or not Unicode text (a string with a lone surrogate).
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except json.JSONDecodeError as err:
        raise NotJSON(f"{err.msg} at line {err.lineno} column {err.colno}") from err
    except UnicodeDecodeError as err:
        raise NotJSON(f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except RecursionError:
        raise NotJSON("nested too deeply to parse") from None
    except NotJSON:
        raise
    except ValueError as err:  # an integer over sys.get_int_max_str_digits()
        raise NotJSON(str(err).split(";")[0]) from None
    pattern = _MAY_HOLD_SURROGATE if isinstance(text, str) else _MAY_HOLD_SURROGATE_BYTES
    if pattern.search(text):  # escaped pairs (emoji) are common, lone halves are not: only then
        _refuse_lone_surrogates(value)  # is every string looked at
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:  # iterative: the depth was bounded by the parser, the width is not
        item = stack.pop()
        if isinstance(item, str):
            found = _LONE_SURROGATE.search(item)
            if found:
                raise NotJSON(
                    f"a string holds a lone UTF-16 surrogate ({ascii(found.group())}), which is "
                    "not Unicode text"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def objects_per_line(lines: Iterable[bytes], where: str) -> Iterator[dict[str, Any]]:
    """The JSON object on each non-blank line of a JSON-lines file, as a binary file yields its
    lines (split at "\\n" only: ``str.splitlines`` also splits at U+2028 and U+0085, which JSON
    strings may hold as they are); ``where`` names the file in the errors."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except NotJSON as err:
            raise InputError(f"{where} line {number} is not JSON ({err})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where} line {number} is not a JSON object")
        yield record
