"""The dashboard as a person (and an attacker) meets it: a real `scorebox dashboard` process over
this test's schema, its pages fetched with httpx and looked at in chromium headless.

Jobs are written straight into the ledger here (a job row with its model's reference, and done
chunks carrying the counts scorebox.profile makes of rows drawn in the test), so that a page can
be shown a job of any shape, up to 100,000 chunks, without scoring it."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from scorebox.migrate import upgrade
from scorebox.settings import Settings


@pytest.fixture
def migrated(settings: Settings, engine: Engine) -> Settings:
    upgrade(engine, settings.predictions_table)
    return settings


def test_the_dashboard_cannot_write(migrated: Settings) -> None:
    import asyncio

    import asyncpg

    from dashboard.app import connect_arguments

    async def delete() -> None:
        conn = await asyncpg.connect(**connect_arguments(migrated.database_url))
        try:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("DELETE FROM scorebox_jobs")
        finally:
            await conn.close()

    asyncio.run(delete())
