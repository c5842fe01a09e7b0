"""The feature schema: which columns of a table a model reads, of which kind, and which it leaves
out and why. Kinds come from the database's own column types, never from guessing at values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    Integer,
    Numeric,
    String,
    Table,
    Uuid,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection

from scorebox.db import reflect
from scorebox.errors import DataError
from scorebox.names import TableName, require_column, resolve_table
from scorebox.settings import Settings

Kind = Literal["number", "bool", "category", "date", "datetime"]
KINDS: tuple[Kind, ...] = ("number", "bool", "category", "date", "datetime")
KeyKind = Literal["integer", "text", "uuid"]


@dataclass(frozen=True)
class Feature:
    """One model input: its column name, kind, SQL type, and (categories) the known values, whose
    position is the code the model sees."""

    name: str
    kind: Kind
    sql_type: str = ""
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain types for the model's metadata."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "sql_type": self.sql_type}
        if self.kind == "category":
            data["categories"] = list(self.categories)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Feature:
        """The inverse of :meth:`to_dict`."""
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            sql_type=str(data.get("sql_type", "")),
            categories=tuple(str(c) for c in data.get("categories", ())),
        )

    def with_categories(self, categories: list[str]) -> Feature:
        """This feature with its known categories."""
        return replace(self, categories=tuple(categories))


def column_kind(column_type: Any) -> Kind | None:
    """The feature kind of a SQL column type, or ``None`` when no kind fits."""
    if isinstance(column_type, Boolean):
        return "bool"
    if isinstance(column_type, Integer | Float | Numeric):
        return "number"
    if isinstance(column_type, DateTime):
        return "datetime"
    if isinstance(column_type, Date):
        return "date"
    if isinstance(column_type, String | Enum):
        return "category"
    return None


def key_kind(column_type: Any) -> KeyKind | None:
    """How rows are keyed by a column of this type: integer, text or UUID (``None``: unusable)."""
    if isinstance(column_type, Boolean):
        return None
    if isinstance(column_type, Integer):
        return "integer"
    if isinstance(column_type, Uuid):
        return "uuid"
    if isinstance(column_type, String | Enum):
        return "text"
    return None


def _left_out_reason(column_type: Any) -> str:
    if isinstance(column_type, Uuid):
        return "a UUID identifies a row; it is not a feature"
    if isinstance(column_type, JSON):
        return "JSON values are not a supported feature type"
    return f"type {column_type} is not a supported feature type"


@dataclass(frozen=True)
class FeatureSchema:
    """A table's id, target and candidate features (before training looks at the values)."""

    table: TableName
    id_column: str
    id_kind: KeyKind
    target_column: str
    target_type: Any
    features: list[Feature]
    left_out: dict[str, str] = field(default_factory=dict)
    explicit: bool = False

    @property
    def feature_names(self) -> list[str]:
        """Feature names in model order."""
        return [f.name for f in self.features]


def resolve_key(table: Table, name: TableName, id_column: str) -> KeyKind:
    """The kind of the table's id column, or a DataError saying why it cannot key rows."""
    columns = [str(c.name) for c in table.columns]
    require_column(id_column, columns, name, "SCOREBOX_ID_COLUMN")
    kind = key_kind(table.c[id_column].type)
    if kind is None:
        raise DataError(
            f"id column {id_column!r} of {str(name)!r} has type {table.c[id_column].type}; "
            "an id must be an integer, text or UUID column"
        )
    return kind


def check_keys(conn: Connection, source: Table, name: TableName, id_column: str) -> None:
    """Refuse an id column with NULLs or repeated values (a unique NOT NULL column is trusted):
    predictions are keyed by it."""
    ids = source.c[id_column]
    if (
        conn.dialect.name == "postgresql"
        and conn.execute(
            text(
                "SELECT 1 FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = CAST(:table AS regclass) AND i.indisunique "
                "AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = :column "
                "AND a.attnotnull"
            ),
            {"table": _regclass(conn, name), "column": id_column},
        ).first()
    ):
        return
    nulls = conn.execute(select(func.count()).select_from(source).where(ids.is_(None))).scalar_one()
    if nulls:
        raise DataError(
            f"id column {id_column!r} of {str(name)!r} is NULL in {nulls} row(s); every row "
            "needs an id (or set SCOREBOX_ID_COLUMN to a unique column)"
        )
    repeated = conn.execute(
        select(ids, func.count()).group_by(ids).having(func.count() > 1).limit(3)
    ).all()
    if repeated:
        shown = ", ".join(f"{value!r} ({count} times)" for value, count in repeated)
        raise DataError(
            f"id column {id_column!r} of {str(name)!r} is not unique: {shown}; predictions are "
            "keyed by id, so set SCOREBOX_ID_COLUMN to a unique column"
        )


def _regclass(conn: Connection, name: TableName) -> str:
    quote = conn.dialect.identifier_preparer.quote_identifier
    return ".".join(quote(part) for part in (name.schema, name.name) if part is not None)


def resolve_schema(conn: Connection, settings: Settings) -> FeatureSchema:
    """Check the configured table and columns against the database and sort the columns into
    features (by kind) and columns left out (with the reason)."""
    name = resolve_table(conn, settings.feature_table, "SCOREBOX_FEATURE_TABLE")
    source = reflect(conn, name)
    columns = {str(c.name): c for c in source.columns}
    names = list(columns)
    id_kind = resolve_key(source, name, settings.id_column)
    check_keys(conn, source, name, settings.id_column)
    require_column(settings.target_column, names, name, "SCOREBOX_TARGET_COLUMN")
    if settings.id_column == settings.target_column:
        raise DataError("SCOREBOX_ID_COLUMN and SCOREBOX_TARGET_COLUMN name the same column")

    reserved = {settings.id_column, settings.target_column}
    features: list[Feature] = []
    left_out: dict[str, str] = {}
    if settings.feature_columns is not None:
        for column in settings.feature_columns:
            require_column(column, names, name, "SCOREBOX_FEATURE_COLUMNS")
            if column in reserved:
                raise DataError(f"feature column {column!r} is also the id or target column")
            kind = column_kind(columns[column].type)
            if kind is None:
                raise DataError(
                    f"feature column {column!r}: {_left_out_reason(columns[column].type)}; "
                    "leave it out of SCOREBOX_FEATURE_COLUMNS"
                )
            features.append(Feature(column, kind, str(columns[column].type)))
    else:
        for column, definition in columns.items():
            if column in reserved:
                continue
            kind = column_kind(definition.type)
            if kind is None:
                left_out[column] = _left_out_reason(definition.type)
            else:
                features.append(Feature(column, kind, str(definition.type)))
    if not features:
        raise DataError(
            f"table {str(name)!r} has no usable feature columns besides the id and target"
            + (
                f" (left out: {'; '.join(f'{k}: {v}' for k, v in left_out.items())})"
                if left_out
                else ""
            )
        )
    return FeatureSchema(
        table=name,
        id_column=settings.id_column,
        id_kind=id_kind,
        target_column=settings.target_column,
        target_type=columns[settings.target_column].type,
        features=features,
        left_out=left_out,
        explicit=settings.feature_columns is not None,
    )
