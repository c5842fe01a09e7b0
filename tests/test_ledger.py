"""The job ledger (scorebox/ledger.py) on real PostgreSQL: a chunk's fence and the job's end, as
SQLAlchemy runs them and as the worker's ADBC fast path runs them, on two identical ledgers
driven through the same steps, leave the same rows; and the steering functions (claim, release,
cancel, reopen, the sweeper's pick) keep their promises."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from scorebox import ledger
from scorebox.db import Tables, make_engine
from scorebox.migrate import upgrade
from scorebox.settings import Settings

Finish = Callable[[ledger.Lease, int, int, dict[str, list[int]] | None], bool]


def _job(engine: Engine, tables: Tables, chunks: int, max_failed: int | None) -> int:
    with engine.begin() as conn:
        return ledger.record(
            conn,
            tables,
            {
                "table_name": "public.features",
                "model_tag": "m:1",
                "mode": "all",
                "status": "queued",
                "rows_total": 10 * chunks,
                "chunks_total": chunks,
                "queue": "q",
                "max_failed_rows": max_failed,
            },
            [(10 * n + 1, 10 * n + 10) for n in range(chunks)],
        )


@pytest.fixture
def ledgers(settings: Settings, database: str) -> Iterator[list[tuple[Engine, Finish]]]:
    """Two migrated schemas: one finished by SQLAlchemy, one by ADBC's statements."""
    import adbc_driver_postgresql.dbapi as adbc

    portable = make_engine(settings.database_url)
    upgrade(portable, settings.predictions_table)
    other_schema = f"{make_url(settings.database_url).query['options'].split('=')[1]}_adbc"
    with portable.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{other_schema}"'))
    url = make_url(settings.database_url).update_query_dict(
        {"options": f"-csearch_path={other_schema}"}
    )
    fast = make_engine(url.render_as_string(hide_password=False))
    upgrade(fast, settings.predictions_table)
    tables = Tables.build(settings.predictions_table)
    connection = adbc.connect(url.set(drivername="postgresql").render_as_string(False))
    names = {"chunks": "scorebox_chunks", "jobs": "scorebox_jobs"}

    def by_sqlalchemy(lease: ledger.Lease, scored: int, failed: int, profile: Any) -> bool:
        with portable.begin() as conn:
            done = ledger.finish_chunk(conn, tables, lease, scored, failed, profile)
            if not done:
                conn.rollback()
            return done

    def by_adbc(lease: ledger.Lease, scored: int, failed: int, profile: Any) -> bool:
        with connection.cursor() as cursor:
            done = ledger.finish_chunk_adbc(
                cursor, names, lease, scored, failed, json.dumps(profile)
            )
        if done:
            connection.commit()
        else:
            connection.rollback()
        return done

    yield [(portable, by_sqlalchemy), (fast, by_adbc)]
    connection.close()
    fast.dispose()
    portable.dispose()


def _state(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        jobs = conn.execute(
            text(
                "SELECT id, status, rows_total, rows_scored, rows_failed, error, "
                "finished_at IS NOT NULL FROM scorebox_jobs ORDER BY id"
            )
        ).all()
        chunks = conn.execute(
            text(
                "SELECT job_id, chunk_no, status, rows_scored, rows_failed, lease_token IS NULL, "
                "CAST(profile AS text) FROM scorebox_chunks ORDER BY job_id, chunk_no"
            )
        ).all()
    return [tuple(r) for r in jobs + chunks]


def test_the_fence_and_the_jobs_end_are_the_same_through_sqlalchemy_and_adbc(
    ledgers: list[tuple[Engine, Finish]],
) -> None:
    tables = Tables.build("predictions")
    outcomes = []
    for engine, finish in ledgers:
        seen = []
        plain = _job(engine, tables, 3, None)
        limited = _job(engine, tables, 3, 2)
        for job_id in (plain, limited):
            for chunk_no, (scored, failed) in enumerate([(10, 0), (8, 2), (12, 1)]):
                with engine.begin() as conn:
                    claim = ledger.claim(conn, tables, job_id, chunk_no, 60)
                assert claim is not None
                stale = ledger.Lease(job_id, chunk_no, "not-mine", "public.features", "m:1")
                seen.append(finish(stale, scored, failed, None))  # a lost lease writes nothing
                seen.append(finish(claim.lease, scored, failed, {"x": [scored, failed]}))
                seen.append(finish(claim.lease, scored, failed, None))  # done already
        # A lease that expired: fenced off, even with the right token.
        late = _job(engine, tables, 1, None)
        with engine.begin() as conn:
            claim = ledger.claim(conn, tables, late, 0, -1)
        assert claim is not None
        seen.append(finish(claim.lease, 10, 0, None))
        outcomes.append((seen, _state(engine)))
    (seen_a, state_a), (seen_b, state_b) = outcomes
    assert seen_a == seen_b
    assert state_a == state_b
    jobs = {row[0]: row for row in state_a if len(row) == 7 and isinstance(row[1], str)}
    # Rows beyond the plan (12 in a 10-row chunk) are counted; 3 failed rows pass no limit...
    assert jobs[1][1:5] == ("succeeded_with_errors", 33, 30, 3)
    # ...but fail the job whose limit is 2, saying so; a late chunk is never written.
    assert jobs[2][1] == "failed" and jobs[2][5].startswith("3 rows failed, more than")
    assert "--max-failed-rows 2; see `scorebox jobs show 2`" in jobs[2][5]
    assert jobs[3][1:5] == ("running", 10, 0, 0)


def test_cancel_reopen_release_and_the_sweepers_pick(settings: Settings, engine: Engine) -> None:
    tables = Tables.build(settings.predictions_table)
    upgrade(engine, settings.predictions_table)
    job_id = _job(engine, tables, 3, None)
    with engine.begin() as conn:
        first = ledger.claim(conn, tables, job_id, 0, 60)
        second = ledger.claim(conn, tables, job_id, 1, -1)  # its lease is over at once
    assert first is not None and second is not None and first.attempt == 1
    with engine.begin() as conn:
        assert ledger.claim(conn, tables, job_id, 0, 60) is None  # leased: not again
        ledger.release(conn, tables, first)  # given back: claimable, the attempt not counted
    with engine.begin() as conn:
        again = ledger.claim(conn, tables, job_id, 0, 60)
        assert again is not None and again.attempt == 1
        # The sweeper takes the expired chunk, not the leased one nor the one just queued.
        assert ledger.due_again(conn, tables, "q", 60, 1) == [(job_id, 1)]
        assert ledger.due_again(conn, tables, "other", 60, 2) == []
    with engine.begin() as conn:
        assert ledger.cancel(conn, tables, job_id) is True
        assert ledger.cancel(conn, tables, job_id) is False
        assert ledger.get(conn, tables, job_id)["status"] == "cancelled"
        assert ledger.claim(conn, tables, job_id, 2, 60) is None  # nothing of it runs
    with engine.begin() as conn:
        assert ledger.reopen(conn, tables, job_id, "q2") == [0, 1, 2]
        job = ledger.get(conn, tables, job_id)
    assert (job["status"], job["queue"], job["error"]) == ("running", "q2", None)
    with engine.connect() as conn, pytest.raises(Exception, match="no job with id 424242"):
        ledger.get(conn, tables, 424242)


def test_the_dashboards_reads_see_what_the_ledgers_functions_see(
    settings: Settings, engine: Engine
) -> None:
    """The dashboard's asyncpg statements (ledger.DASHBOARD_*) against the portable reads."""
    import asyncio

    import asyncpg

    from dashboard import queries
    from scorebox.db import asyncpg_arguments

    tables = Tables.build(settings.predictions_table)
    upgrade(engine, settings.predictions_table)
    first, job_id = _job(engine, tables, 2, None), _job(engine, tables, 3, None)
    with engine.begin() as conn:
        ledger.record_failed(conn, tables, job_id, [("b 2", "bad value"), ("a 1", "NULL")])
        claim = ledger.claim(conn, tables, job_id, 1, 60)
        assert claim is not None
        assert ledger.finish_chunk(conn, tables, claim.lease, 8, 2, {"x": [8, 2]})
    with engine.connect() as conn:
        portable = ledger.get(conn, tables, job_id)
        listed, _ = ledger.listing(conn, tables)
        failed = ledger.failed_rows(conn, tables, job_id)
        profiles = list(ledger.done_profiles(conn, tables, job_id))

    async def read() -> tuple[Any, ...]:
        conn = await asyncpg.connect(**asyncpg_arguments(settings.database_url, "test"))
        try:
            return (
                await queries.job(conn, job_id),
                await queries.jobs(conn),
                await queries.failed_rows(conn, job_id),
                await queries.done_chunks(conn, job_id),
                await queries.chunk_counts(conn, job_id, 0, 2),
                await queries.job(conn, 424242),
            )
        finally:
            await conn.close()

    shown, recent, shown_failed, done, counts, missing = asyncio.run(read())
    assert {k: shown[k] for k in shown if k in portable} == {
        k: portable[k] for k in shown if k in portable
    }
    assert shown["rows_scored"] == 8 and shown["progress"] == 10 / 30
    assert [j["id"] for j in recent] == [j["id"] for j in listed] == [job_id, first]
    assert (
        shown_failed
        == failed
        == [
            {"row_id": "a 1", "reason": "NULL"},
            {"row_id": "b 2", "reason": "bad value"},
        ]
    )
    assert done == [1] and [json.loads(text) for _, text in counts] == profiles == [{"x": [8, 2]}]
    assert missing is None
