"""The base of every request schema (body, query and path arguments).

:class:`RequestSchema` refuses, before any field is loaded, every string in the input (values
at any depth, and keys) that PostgreSQL or an encoder cannot take: a NUL character
(``psycopg.DataError``) or a lone UTF-16 surrogate such as ``"\\ud800"`` (not encodable as
UTF-8). The error is the usual 422 ``validation_error`` with ``errors.<field>``. Integer fields
of request schemas carry a bounded ``Range`` (tests/abuse/test_input.py checks every schema).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import Schema, ValidationError, pre_load

INT32_MAX = 2**31 - 1  # PostgreSQL ``integer``

UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")
UNSAFE_MESSAGE = "Must not contain NUL characters or unpaired surrogates."


def has_unsafe_text(value: Any) -> bool:
    """Whether ``value`` or anything inside it (lists, dict keys and values) holds a
    string with a NUL or a lone surrogate. Iterative: the JSON layer already bounds depth,
    but this must not recurse either."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if UNSAFE_TEXT.search(item):
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _entries(data: Any) -> Iterable[tuple[Any, list[Any]]]:
    """(key, values) of a JSON object or of webargs' MultiDictProxy (query strings keep every
    repeated value)."""
    multidict = getattr(data, "data", None)
    if multidict is not None and hasattr(multidict, "lists"):
        return list(multidict.lists())
    if isinstance(data, Mapping):
        return [(key, [value]) for key, value in data.items()]
    return []


def _printable(key: Any) -> str:
    text = str(key)
    return UNSAFE_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class RequestSchema(Schema):
    """Base class of every schema that loads client input."""

    @pre_load
    def _refuse_unsafe_text(self, data: Any, **_: Any) -> Any:
        errors: dict[str, list[str]] = {}
        for key, values in _entries(data):
            if has_unsafe_text(key) or has_unsafe_text(values):
                errors[_printable(key)] = [UNSAFE_MESSAGE]
        if errors:
            raise ValidationError(errors)
        return data
