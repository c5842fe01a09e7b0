"""scorebox/names.py: table names as a user writes them, read, quoted and found in PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from scorebox.errors import DataError
from scorebox.names import TableName, check_name, parse_table, quote_identifier, resolve_table


def test_names_are_read_as_postgresql_reads_them() -> None:
    assert parse_table("features") == TableName(None, "features")
    assert parse_table('ml."Clinic Visits"') == TableName("ml", "Clinic Visits")
    assert parse_table('"my.table"') == TableName(None, "my.table")
    assert parse_table('a."b""c"') == TableName("a", 'b"c')
    assert str(TableName("ml", "my.table")) == 'ml."my.table"'
    assert str(TableName(None, "plain")) == "plain"


@pytest.mark.parametrize(
    "value", ['"', "a.b.c", " ", ".big", "..", "features\n", 'a"b', '"open', '"a"b', "x" * 64, ""]
)
def test_a_malformed_name_is_a_value_error_that_quotes_it(value: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_table(value, "SCOREBOX_FEATURE_TABLE")
    message = str(refused.value)
    assert message.startswith("SCOREBOX_FEATURE_TABLE") and "\n" not in message


def test_check_name_refuses_empty_control_and_long_names() -> None:
    assert check_name("Visit ID", "column") == "Visit ID"
    for bad in ("", "  ", "a\tb", "ok\n", "é" * 32):
        with pytest.raises(ValueError, match="column"):
            check_name(bad, "column")


@pytest.mark.parametrize("name", ['we"ird', "Mixed Case", "größe", "a;DROP TABLE x", "dot.ted"])
def test_a_quoted_identifier_names_exactly_that_table(engine: Engine, name: str) -> None:
    quoted = quote_identifier(name)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {quoted} (id int)"))
        conn.execute(text(f"INSERT INTO {quoted} VALUES (7)"))
        assert conn.execute(text(f"SELECT id FROM {quoted}")).scalar() == 7
        listed = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ).scalars()
        assert name in list(listed)


def test_resolve_table_finds_the_table_or_suggests_the_near_names(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text('CREATE TABLE "Customer Churn" (id int)'))
        found = resolve_table(conn, '"Customer Churn"', "SCOREBOX_FEATURE_TABLE")
        assert found.name == "Customer Churn"
        with pytest.raises(DataError, match="SCOREBOX_FEATURE_TABLE") as missing:
            resolve_table(conn, "customer_churn", "SCOREBOX_FEATURE_TABLE")
        assert "Customer Churn" in str(missing.value)
        with pytest.raises(DataError, match="SCOREBOX_FEATURE_TABLE"):
            resolve_table(conn, "a.b.c", "SCOREBOX_FEATURE_TABLE")
