"""The ``/predict`` body: ``{"records": [...]}`` (or one record object), read with bounded work.

Before the JSON is decoded, its shape is bounded: records are flat objects, so a body may hold
at most one ``{`` per record (plus the wrapper) and one ``,`` per field. A cheap count of both
characters settles almost every body; only one with more of them than the limits allow (they
may sit inside strings) is scanned token by token, stopping as soon as a limit is passed.
Values are checked as they are encoded (scorebox/encoding.py), which spells out the first 20
problems and only counts the rest, so a small body can never make the service build millions of
objects or messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from scorebox.errors import RequestBodyError
from scorebox.features import Feature

_decode = msgspec.json.Decoder().decode
# A JSON string, or a character that opens an object or separates values.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{,]', re.DOTALL)


def _too_big(body: bytes, max_objects: int, max_commas: int) -> str | None:
    """Which bound the body passes (``"records"`` or ``"values"``), if any: more objects or
    values than ``max_records`` records can hold."""
    if body.count(b"{") <= max_objects and body.count(b",") <= max_commas:
        return None
    objects = commas = 0
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token == b"{":
            objects += 1
        elif token == b",":
            commas += 1
        if objects > max_objects:
            return "records"
        if commas > max_commas:
            return "values"
    return None


def parse_records(body: bytes, features: Sequence[Feature], max_records: int) -> list[Any]:
    """The records of a ``/predict`` body (their values are checked as they are encoded).

    Raises RequestBodyError: 400 for a body that is not JSON, 413 for more records (or values) than
    the limit allows, 422 for a body that is not ``{"records": [...]}``.
    """
    passed = _too_big(body, max_records + 1, max_records * (len(features) + 1))
    if passed == "records":
        raise RequestBodyError(_limit_message(max_records, f"more than {max_records}"), 413)
    if passed == "values":
        raise RequestBodyError(
            f"more values than {max_records} records of {len(features)} features hold; the "
            f"limit is {max_records} records (SCOREBOX_SERVICE_MAX_RECORDS): {_SPLIT}",
            413,
        )
    try:
        decoded = _decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RequestBodyError(f"malformed JSON body: {exc}", 400) from None
    if not isinstance(decoded, dict) or "records" not in decoded:
        raise RequestBodyError('body: expected {"records": [...]}; records: Field required', 422)
    extra = [key for key in decoded if key != "records"]
    if extra:
        raise RequestBodyError(f"body.{extra[0]}: unknown field (send only records)", 422)
    records = decoded["records"]
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise RequestBodyError("records: expected a non-empty list of objects (or one object)", 422)
    if len(records) > max_records:
        raise RequestBodyError(_limit_message(max_records, str(len(records))), 413)
    return records


_SPLIT = "split the request or use /v1/predict/arrow"


def _limit_message(limit: int, count: str) -> str:
    return (
        f"{count} records in one request; the limit is {limit} "
        f"(SCOREBOX_SERVICE_MAX_RECORDS): {_SPLIT}"
    )
