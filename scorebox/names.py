"""Table and column names as users write them: any name the database holds (spaces, mixed case,
non-ASCII), checked against the catalog and always quoted, never pasted into SQL.

A table is named ``table`` or ``schema.table``; names are taken exactly as written (no case
folding). A part that itself contains a dot is written in double quotes, as in SQL:
``"my.table"`` or ``analytics."my.table"`` (a double quote inside quotes is doubled).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from scorebox.errors import DataError

# PostgreSQL keeps at most 63 bytes of a name and silently cuts the rest (NAMEDATALEN - 1).
MAX_NAME_BYTES = 63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it can name a column or table: not empty, no control characters
    (a trailing newline included), at most 63 bytes."""
    if not value or not value.strip():
        raise ValueError(f"{what} is empty")
    if _CONTROL.search(value):
        raise ValueError(f"{what} {value!r} contains a control character")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{what} {value!r} is longer than {MAX_NAME_BYTES} bytes")
    return value


@dataclass(frozen=True)
class TableName:
    """A table's schema (``None``: the first on the search path) and name, exactly as written."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        parts = [self.schema, self.name] if self.schema is not None else [self.name]
        return ".".join(_show(part) for part in parts)


def quote_identifier(part: str) -> str:
    """One name part (a schema, table or column) quoted for SQL: always quoted, inner quotes
    doubled, so any name the database could hold reads as itself."""
    return '"' + part.replace('"', '""') + '"'


def _show(part: str) -> str:
    """A name part as it would be written back: quoted when it holds a dot or a quote."""
    if "." in part or '"' in part or part != part.strip():
        return quote_identifier(part)
    return part


def parse_table(value: str, what: str = "table name") -> TableName:
    """Parse ``table``, ``schema.table`` or their double-quoted forms; ValueError if malformed."""
    parts: list[str] = []
    i = 0
    while True:
        if i < len(value) and value[i] == '"':
            part, i = _quoted(value, i, what)
        else:
            end = value.find(".", i)
            end = len(value) if end < 0 else end
            part, i = value[i:end], end
            if '"' in part:
                raise ValueError(f"{what} {value!r} has a stray double quote")
        parts.append(check_name(part, what))
        if i == len(value):
            break
        if value[i] != ".":
            raise ValueError(f"{what} {value!r}: expected a dot after a quoted part")
        i += 1
    if len(parts) > 2:
        raise ValueError(
            f"{what} {value!r} has more than one dot; write a name that contains a dot in "
            'double quotes, like schema."my.table"'
        )
    return TableName(parts[0] if len(parts) == 2 else None, parts[-1])


def _quoted(value: str, start: int, what: str) -> tuple[str, int]:
    """The double-quoted part starting at ``start`` and the index after its closing quote."""
    out, i = [], start + 1
    while i < len(value):
        if value[i] == '"':
            if value[i + 1 : i + 2] == '"':
                out.append('"')
                i += 2
                continue
            return "".join(out), i + 1
        out.append(value[i])
        i += 1
    raise ValueError(f"{what} {value!r} has an unclosed double quote")


def _suggest(wanted: str, existing: list[str]) -> str:
    """A hint naming the existing name that differs only in case (or is closest)."""
    same = [name for name in existing if name.casefold() == wanted.casefold()]
    if same:
        return (
            f"; did you mean {same[0]!r}? Names are case-sensitive (CREATE TABLE without quotes "
            "folds a name to lower case)"
        )
    close = difflib.get_close_matches(wanted, existing, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def resolve_table(conn: Connection, value: str | TableName, setting: str) -> TableName:
    """The table ``value`` names, with its schema filled in from the catalog, or a DataError
    that suggests the case-insensitive match."""
    try:
        wanted = parse_table(value) if isinstance(value, str) else value
    except ValueError as exc:
        raise DataError(f"{setting}: {exc}") from None
    inspector = inspect(conn)
    if conn.dialect.name != "postgresql":
        existing = inspector.get_table_names() + inspector.get_view_names()
        if wanted.schema is None and wanted.name in existing:
            return wanted
    else:
        row = conn.execute(
            text(
                "SELECT n.nspname, c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = :name AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND "
                "(n.nspname = :schema OR (CAST(:schema AS text) IS NULL "
                "AND pg_table_is_visible(c.oid)))"
            ),
            {"name": wanted.name, "schema": wanted.schema},
        ).first()
        if row is not None:
            return TableName(str(row[0]), str(row[1]))
        schemas = inspector.get_schema_names()
        if wanted.schema is not None and wanted.schema not in schemas:
            raise DataError(
                f"schema {wanted.schema!r} ({setting}) does not exist in the database"
                + _suggest(wanted.schema, schemas)
            )
        schema = wanted.schema or inspector.default_schema_name
        existing = inspector.get_table_names(schema) + inspector.get_view_names(schema)
    hint = _suggest(wanted.name, existing) or f"; create it, or name another with {setting}"
    raise DataError(f"table {str(wanted)!r} ({setting}) does not exist in the database{hint}")


def require_column(name: str, columns: list[str], table: TableName, setting: str) -> None:
    """A DataError naming the column, the table and the case-insensitive match, if missing."""
    if name not in columns:
        hint = _suggest(name, columns)
        listed = "" if hint else f"; its columns are: {', '.join(columns)}"
        raise DataError(f"column {name!r} ({setting}) is not in table {str(table)!r}{hint}{listed}")
