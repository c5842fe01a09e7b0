"""The feature schema: which columns of the feature table a model reads, and their types."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Boolean, Float, Integer, Numeric, Table
from sqlalchemy.engine import Connection

from scorebox.db import reflect_table
from scorebox.errors import DataError
from scorebox.settings import Settings


@dataclass(frozen=True)
class FeatureSchema:
    """The columns a model is trained on and scores: id, features (name -> dtype), target."""

    table: str
    id_column: str
    target_column: str
    features: dict[str, str]

    @property
    def feature_names(self) -> list[str]:
        """Feature names in model order."""
        return list(self.features)


def _dtype(column_type: object) -> str | None:
    """The model-facing dtype of a SQL column type, or ``None`` when it is not numeric."""
    if isinstance(column_type, Boolean):
        return "bool"
    if isinstance(column_type, Integer):
        return "int"
    if isinstance(column_type, Float | Numeric):
        return "float"
    return None


def resolve_schema(
    conn: Connection, settings: Settings, *, need_target: bool = True
) -> FeatureSchema:
    """Check the configured table and columns against the database and return their schema."""
    table: Table = reflect_table(conn, settings.feature_table)
    # Reflected names are SQLAlchemy's quoted_name; plain str keeps them serialisable.
    columns = {str(column.name): column for column in table.columns}

    def require(name: str, setting: str) -> None:
        if name not in columns:
            raise DataError(
                f"column {name!r} ({setting}) is not in table {settings.feature_table!r}; "
                f"its columns are: {', '.join(columns)}"
            )

    require(settings.id_column, "SCOREBOX_ID_COLUMN")
    if not isinstance(columns[settings.id_column].type, Integer):
        raise DataError(
            f"id column {settings.id_column!r} must be an integer column, "
            f"not {columns[settings.id_column].type}"
        )
    if need_target:
        require(settings.target_column, "SCOREBOX_TARGET_COLUMN")

    reserved = {settings.id_column, settings.target_column}
    if settings.feature_columns is not None:
        features = {}
        for name in settings.feature_columns:
            require(name, "SCOREBOX_FEATURE_COLUMNS")
            if name in reserved:
                raise DataError(f"feature column {name!r} is also the id or target column")
            dtype = _dtype(columns[name].type)
            if dtype is None:
                raise DataError(
                    f"feature column {name!r} has type {columns[name].type}, which is not numeric; "
                    "encode it as numbers or leave it out of SCOREBOX_FEATURE_COLUMNS"
                )
            features[name] = dtype
    else:
        features = {
            name: dtype
            for name, column in columns.items()
            if name not in reserved and (dtype := _dtype(column.type)) is not None
        }
    if not features:
        raise DataError(
            f"table {settings.feature_table!r} has no numeric feature columns "
            "besides the id and target columns"
        )
    return FeatureSchema(
        table=settings.feature_table,
        id_column=settings.id_column,
        target_column=settings.target_column,
        features=features,
    )
