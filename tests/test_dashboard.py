"""The dashboard as a person (and an attacker) meets it: a real `scorebox dashboard` process over
this test's schema, its pages fetched with httpx and looked at in chromium headless.

Jobs are written straight into the ledger here (a job row with its model's reference, and done
chunks carrying the counts scorebox.profile makes of rows drawn in the test), so that a page can
be shown a job of any shape, up to 100,000 chunks, without scoring it."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine, text

from scorebox.features import Feature
from scorebox.migrate import upgrade
from scorebox.profile import count_chunk, reference
from scorebox.settings import Settings
from tests.conftest import process_env
from tests.dashboards import Browser, dashboard, svg_texts, table_rows

RNG_SEED = 21


@pytest.fixture
def migrated(settings: Settings, engine: Engine) -> Settings:
    upgrade(engine, settings.predictions_table)
    return settings


# --- jobs written into the ledger -------------------------------------------------------------


def _reference(features: Sequence[Feature], matrix: np.ndarray, scores: np.ndarray) -> dict:
    """What a job of a two-class model stores: its features and its training profile."""
    return {
        "task": "classification",
        "classes": [0, 1],
        "features": [f.to_dict() for f in features],
        "profile": reference(features, matrix, scores, probability=True),
    }


def _counts(ref: dict, matrix: np.ndarray, scores: np.ndarray) -> dict[str, list[int]]:
    """One chunk's counts of ``matrix``'s rows, as a worker stores them."""
    names = [f["name"] for f in ref["features"]]
    return count_chunk(ref["profile"], names, matrix, Counter(), scores)


def _rows(counts: dict[str, list[int]]) -> int:
    return sum(next(iter(counts.values())))


def _insert_job(
    engine: Engine,
    ref: Any,
    profiles: Sequence[dict[str, list[int]]],
    chunks: int | None = None,
    *,
    pending: int = 0,
    table: str = "features",
) -> int:
    """A job whose ``chunks`` done chunks carry ``profiles`` in turn, then ``pending`` chunks
    not done yet (the job is running then, else it succeeded)."""
    done = len(profiles) if chunks is None else chunks
    scored = sum(_rows(profiles[g % len(profiles)]) for g in range(done))
    with engine.begin() as conn:
        job_id = conn.execute(
            text(
                "INSERT INTO scorebox_jobs (table_name, model_tag, mode, status, rows_total, "
                "rows_scored, chunks_total, reference, started_at, finished_at) VALUES (:table, "
                "'scorebox-test:v1', 'all', :status, :total, :scored, :chunks, "
                "CAST(:reference AS json), now() - interval '1 minute', "
                "CASE WHEN :pending > 0 THEN NULL ELSE now() END) RETURNING id"
            ),
            {
                "table": table,
                "status": "running" if pending else "succeeded",
                "total": scored + pending * 100,
                "scored": scored,
                "chunks": done + pending,
                "reference": json.dumps(ref),
                "pending": pending,
            },
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO scorebox_chunks (job_id, chunk_no, id_lo, id_hi, status, "
                "rows_scored, profile) SELECT :job, g, g::text, g::text, CASE WHEN g < :done "
                "THEN 'done' ELSE 'pending' END, 0, CASE WHEN g < :done THEN "
                "CAST(:profiles AS json) -> (g % :n) END FROM generate_series(0, :all - 1) g"
            ),
            {
                "job": job_id,
                "done": done,
                "all": done + pending,
                "profiles": json.dumps(list(profiles)),
                "n": len(profiles),
            },
        )
    return int(job_id)


def _psi(shares: Sequence[float], counts: np.ndarray) -> float:
    """PSI as the README defines it, written here from scratch."""
    e = np.maximum(np.asarray(shares, dtype=float), 1e-4)
    o = np.maximum(counts / counts.sum(), 1e-4)
    return float(np.sum((o - e) * np.log(o / e)))


def _drift_table(html: str) -> dict[str, tuple[str, list[str]]]:
    """The job page's drift table: {feature: (the row's class, its cells)}."""
    rows = table_rows(html)
    start = next((i for i, (_, cells) in enumerate(rows) if cells[:2] == ["feature", "kind"]), None)
    if start is None:
        return {}
    found = {}
    for kind, cells in rows[start + 1 :]:
        if len(cells) < 3:
            break
        found[cells[0]] = (kind, cells)
    return found


def test_chunk_counts_add_up_as_json_reads_them_and_anything_else_is_refused() -> None:
    from dashboard.profiles import add_up

    rng = np.random.default_rng(RNG_SEED)
    chunks = [
        {"a": rng.integers(0, 1000, 12).tolist(), "b$ [x]": rng.integers(0, 9, 4).tolist()}
        for _ in range(300)
    ]
    texts = [json.dumps(c) for c in chunks] + ["null", json.dumps({"a": [0] * 12})]
    total = add_up(texts)
    assert set(total) == {"a", "b$ [x]"}
    for name in total:
        assert total[name].tolist() == [
            sum(c[name][i] for c in chunks) for i in range(len(chunks[0][name]))
        ]
    for bad in (
        '{"a": [1, 2.5]}',
        '{"a": [1, [2]]}',
        '{"a": 5}',
        '{"a": [1, -2]}',
        '{"a": []}',
        '{"a": ["1"]}',
        '{"a": [1, 2, 3]}',
        '{"a": [1, 2}',
        "[1, 2]",
    ):
        with pytest.raises(ValueError):
            add_up([bad, '{"a": [1, 2]}'])


# --- charts draw text as given ----------------------------------------------------------------


def test_dollar_signs_in_names_and_categories_are_drawn_literally(
    migrated: Settings, engine: Engine, tmp_path: Path, screenshots: Path
) -> None:
    odd = "US$ 5 # $10"  # matplotlib would read "$ 5 # $" as (broken) math
    features = [
        Feature(odd, "number"),
        Feature("paid in", "category", categories=(odd, "EUR", "$x$")),
    ]
    rng = np.random.default_rng(RNG_SEED)
    paid = rng.choice([0, 1, 2], size=2000, p=[0.7, 0.2, 0.1])
    train = np.column_stack([rng.normal(size=2000), paid]).astype(float)
    ref = _reference(features, train, rng.uniform(size=2000))
    # Every row of the job pays in "$x$" (code 2), a tenth of training's: it drifts most.
    now = np.column_stack([rng.normal(0.5, size=500), np.full(500, 2.0)])
    job = _insert_job(engine, ref, [_counts(ref, now, rng.uniform(size=500))])

    with dashboard(process_env(migrated), tmp_path / "dashboard.log") as url:
        page = httpx.get(f"{url}/jobs/{job}", timeout=30)
        assert page.status_code == 200, page.text
        drawn = svg_texts(page.text)
        assert odd in drawn and "$x$" in drawn and "paid in" in drawn, drawn
        assert any(t.startswith("paid in: training against this job") for t in drawn), drawn
        assert set(_drift_table(page.text)) == {odd, "paid in", "(model score)"}
        jobs = httpx.get(f"{url}/jobs", timeout=30)
        assert jobs.status_code == 200 and "paid in" in jobs.text
        Browser(screenshots).screenshot(f"{url}/jobs/{job}", "job-dollar-names")


def test_job_rows_that_cannot_be_read_are_said_so_not_a_500(
    migrated: Settings, engine: Engine, tmp_path: Path
) -> None:
    rng = np.random.default_rng(RNG_SEED)
    ref = _reference([Feature("x", "number")], rng.normal(size=(500, 1)), rng.uniform(size=500))
    good = _counts(ref, rng.normal(size=(100, 1)), rng.uniform(size=100))
    # A job's row is the database's, not signed: anyone who can write it can write anything.
    garbled = _insert_job(engine, ref | {"profile": {"features": "nope"}}, [good])
    listed = _insert_job(engine, ["not", "an", "object"], [good])
    miscounted = _insert_job(engine, ref, [good, {"x": [1, 2.5], "__score__": "many"}])
    with dashboard(process_env(migrated), tmp_path / "dashboard.log") as url:
        for job in (garbled, miscounted):
            page = httpx.get(f"{url}/jobs/{job}", timeout=30)
            assert page.status_code == 200 and "drift cannot be shown now" in page.text, job
        page = httpx.get(f"{url}/jobs/{listed}", timeout=30)
        assert page.status_code == 200 and "has no training profile" in page.text
        assert httpx.get(f"{url}/jobs", timeout=30).status_code == 200


# --- a big job --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_of_100000_chunks_is_shown_fast_and_every_other_page_meanwhile(
    migrated: Settings, engine: Engine, tmp_path: Path, screenshots: Path
) -> None:
    rng = np.random.default_rng(RNG_SEED)
    features = [Feature(f"feature_{i:02d}", "number") for i in range(30)]
    train = rng.normal(size=(5000, 30))
    ref = _reference(features, train, rng.uniform(size=5000))
    same = _counts(ref, rng.normal(size=(100, 30)), rng.uniform(size=100))
    moved_rows = rng.normal(size=(100, 30))
    moved_rows[:, 7] += 1.5
    moved = _counts(ref, moved_rows, rng.uniform(size=100))
    started = time.perf_counter()
    big = _insert_job(engine, ref, [same, moved], chunks=100_000)
    inserted = time.perf_counter() - started
    small = _insert_job(engine, ref, [same] * 3)
    merged = 50_000 * (np.asarray(same["feature_07"]) + np.asarray(moved["feature_07"]))
    expected = _psi(ref["profile"]["features"]["feature_07"]["shares"], merged)

    with dashboard(process_env(migrated), tmp_path / "dashboard.log") as url:
        httpx.get(f"{url}/jobs/{small}", timeout=30).raise_for_status()  # warm
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:  # another person, looking at another job meanwhile
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    t = time.perf_counter()
                    client.get(f"{url}/jobs/{small}").raise_for_status()
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            t = time.perf_counter()
            first = httpx.get(f"{url}/jobs/{big}", timeout=120)
            first_seconds = time.perf_counter() - t
            assert first.status_code == 200
            while "feature_07" not in _drift_table(first.text):  # counted in the background
                assert time.perf_counter() - t < 120, "the drift was never shown"
                time.sleep(0.5)
                first = httpx.get(f"{url}/jobs/{big}", timeout=120)
            drift_seconds = time.perf_counter() - t
        finally:
            stop.set()
            prober.join()
        again = []
        for _ in range(3):
            t = time.perf_counter()
            page = httpx.get(f"{url}/jobs/{big}", timeout=120)
            again.append(time.perf_counter() - t)
        t = time.perf_counter()
        listed = httpx.get(f"{url}/jobs", timeout=120)
        list_seconds = time.perf_counter() - t
        Browser(screenshots).screenshot(f"{url}/jobs/{big}", "job-100000-chunks")

    figures = (
        f"100,000 chunks inserted in {inserted:.1f} s; job page: first answer "
        f"{first_seconds:.2f} s, drift shown after {drift_seconds:.2f} s, then "
        f"{statistics.median(again):.2f} s (median of 3); jobs list {list_seconds:.2f} s; "
        f"another job's page meanwhile: {len(latencies)} answers, median "
        f"{statistics.median(latencies) * 1000:.0f} ms, slowest {max(latencies) * 1000:.0f} ms"
    )
    print(f"\n{figures}")
    assert "10,000,000 scored" in page.text
    kind, cells = _drift_table(page.text)["feature_07"]
    assert kind == "drifted" and abs(float(cells[2]) - expected) < 5e-4, (cells, expected)
    assert "feature_07" in listed.text
    assert first_seconds < 3 and max(again) < 2 and list_seconds < 3, figures
    assert max(latencies) < 1.0, figures


# --- the token --------------------------------------------------------------------------------

TOKEN = "sésame-ключ-🔑"


def _secured(response: httpx.Response) -> None:
    policy = response.headers.get("content-security-policy", "")
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, response
    assert "script-src" not in policy  # no script may run, inline or not
    assert response.headers.get("x-frame-options") == "DENY"
    assert response.headers.get("x-content-type-options") == "nosniff"


def test_the_token_is_compared_as_bytes_leaves_the_address_and_the_cookie_is_not_it(
    migrated: Settings, engine: Engine, tmp_path: Path, screenshots: Path
) -> None:
    rng = np.random.default_rng(RNG_SEED)
    features = [Feature("x", "number")]
    ref = _reference(features, rng.normal(size=(500, 1)), rng.uniform(size=500))
    job = _insert_job(
        engine, ref, [_counts(ref, rng.normal(size=(100, 1)), rng.uniform(size=100))], pending=3
    )
    env = process_env(migrated, SCOREBOX_API_TOKEN=TOKEN)
    log = tmp_path / "dashboard.log"
    with dashboard(env, log, failures=True) as url, httpx.Client(base_url=url) as client:
        bearer = {"Authorization": b"Bearer " + TOKEN.encode()}
        right = client.get(f"/jobs/{job}", headers=bearer)
        assert right.status_code == 200, right.text
        _secured(right)
        for wrong in ("sésame-faux", "x", TOKEN + "x", TOKEN[:-1]):
            refused = client.get("/jobs", headers={"Authorization": b"Bearer " + wrong.encode()})
            assert refused.status_code == 401, (wrong, refused.text)
            _secured(refused)
        assert client.get("/jobs", params={"token": "wrong-ключ"}).status_code == 401

        # ?token= once: a redirect to the bare address that sets a cookie derived from it.
        opened = client.get(f"/jobs/{job}?token={quote(TOKEN)}", follow_redirects=False)
        assert opened.status_code == 303, opened.text
        assert opened.headers["location"] == f"/jobs/{job}"
        _secured(opened)
        cookie = opened.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        value = rest.split(";")[0]
        attributes = {a.strip().lower() for a in rest.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes, cookie
        assert "secure" not in attributes  # served over plain HTTP here
        assert len(value) >= 32 and TOKEN not in cookie and quote(TOKEN) not in cookie
        assert value not in TOKEN.encode().hex()

        live = httpx.get(f"{url}/jobs/{job}", cookies={name: value})
        assert live.status_code == 200 and '<meta http-equiv="refresh" content="5">' in live.text
        assert "token" not in live.text
        # The raw token is no cookie of this dashboard (a cookie that held it would be a key
        # to /predict too).
        assert httpx.get(f"{url}/jobs", cookies={name: TOKEN.encode().hex()}).status_code == 401
        assert httpx.get(f"{url}/jobs", cookies={name: quote(TOKEN)}).status_code == 401

        # Behind a proxy that speaks TLS, the cookie is Secure.
        proxied = client.get(
            f"/jobs?token={quote(TOKEN)}",
            headers={"X-Forwarded-Proto": "https"},
            follow_redirects=False,
        )
        assert proxied.status_code == 303 and "secure" in proxied.headers["set-cookie"].lower()

        # Every answer carries the headers: a missing page, a missing job, a chart.
        for path in ("/nowhere", "/jobs/999999", "/log", "/"):
            _secured(client.get(path, headers=bearer))

        # A browser opened with ?token= follows the redirect and is let in by the cookie (a
        # session cookie: a new browser session opens with the token again).
        browser = Browser(screenshots)
        opened_dom = browser.dom(f"{url}/jobs/{job}?token={quote(TOKEN)}")
        assert f"Job {job}" in opened_dom and "scored" in opened_dom, opened_dom[:500]
        assert "API token" in browser.dom(f"{url}/jobs")
        browser.screenshot(f"{url}/jobs/{job}?token={quote(TOKEN)}", "job-live")

        # An error page too (the log's table gone: this test may write, the dashboard cannot).
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE scorebox_prediction_log RENAME TO away"))
        failed = client.get("/log", headers=bearer)
        assert failed.status_code == 500
        _secured(failed)
    assert log.read_text().count("Traceback") == 1 and "UndefinedTable" in log.read_text()


# --- models -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_version_has_a_page_and_a_malformed_row_is_shown_refused(
    migrated: Settings, engine: Engine, tmp_path: Path, screenshots: Path
) -> None:
    from scorebox.aliases import set_alias
    from scorebox.catalog import Catalog
    from scorebox.seed import seed
    from training import train

    with engine.begin() as conn:
        seed(conn, migrated.feature_table, id_column="id", target_column="target")
    versions = [train(migrated, engine) for _ in range(4)]  # newest last
    catalog = Catalog.from_settings(migrated, engine)
    oldest = versions[0]
    set_alias(catalog, "champion", oldest.tag)
    set_alias(catalog, "challenger", versions[-1].tag)
    bad = f"{migrated.model_name}:malformed"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scorebox_models (tag, name, task, estimator, metrics, metadata, "
                "artifact, artifact_sha256, signature, created_by) VALUES (:tag, :name, "
                "'classification', 'x', CAST(:metrics AS json), CAST(:metadata AS json), "
                "'not an archive', 'x', '{\"scheme\": 1}', 'x')"
            ),
            {
                "tag": bad,
                "name": migrated.model_name,
                "metrics": json.dumps({"roc_auc": None}),
                "metadata": json.dumps({"features": "nope"}),
            },
        )

    with dashboard(process_env(migrated), tmp_path / "dashboard.log") as url:
        listed = httpx.get(url, timeout=30)
        assert listed.status_code == 200, listed.text
        for version in versions:
            assert f'href="/models/{version.tag}"' in listed.text
        assert f'href="/models/{bad}"' in listed.text and "Refused" in listed.text

        page = httpx.get(f"{url}/models/{oldest.tag}", timeout=30)
        assert page.status_code == 200, page.text
        assert 'class="alias">champion<' in page.text
        cells = {c for _, row in table_rows(page.text) for c in row}
        for name, value in oldest.info.metrics.items():
            assert name in cells and f"{value:.4f}" in cells, (name, value)
        assert set(oldest.info.feature_names) <= cells
        assert f'src="/models/{oldest.tag}/evaluation.png"' in page.text
        plot = httpx.get(f"{url}/models/{oldest.tag}/evaluation.png", timeout=30)
        assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"

        refused = httpx.get(f"{url}/models/{bad}", timeout=30)
        assert refused.status_code == 200 and "signature is malformed" in refused.text
        assert "evaluation.png" not in refused.text
        assert httpx.get(f"{url}/models/{migrated.model_name}:nope", timeout=30).status_code == 404

        browser = Browser(screenshots)
        browser.screenshot(url, "models")
        browser.screenshot(f"{url}/models/{oldest.tag}", "model")
        browser.screenshot(f"{url}/models/{bad}", "model-refused")


# --- what a person sees on jobs ---------------------------------------------------------------


def _false_alarms(shares: Sequence[float], rows: int, trials: int = 20_000) -> float:
    """How often a sample of ``rows`` rows drawn from training's own shares passes PSI 0.2."""
    rng = np.random.default_rng(7)
    p = np.asarray(shares, dtype=float)
    drawn = rng.multinomial(rows, p / p.sum(), size=trials)
    e = np.maximum(p, 1e-4)
    o = np.maximum(drawn / rows, 1e-4)
    return float(np.mean(np.sum((o - e) * np.log(o / e), axis=1) > 0.2))


@pytest.mark.slow
def test_job_pages_show_the_score_dates_and_too_small_samples_plainly(
    migrated: Settings, engine: Engine, tmp_path: Path, screenshots: Path
) -> None:
    rng = np.random.default_rng(RNG_SEED)
    features = [
        Feature("radius", "number"),
        Feature("signup", "date"),
        Feature("plan", "category", categories=("basic", "pro", "team")),
    ]
    epoch = date(1970, 1, 1)
    first_day = (date(2019, 1, 1) - epoch).days

    def rows(n: int, days_later: int = 0) -> np.ndarray:
        return np.column_stack(
            [
                rng.normal(10, 2, size=n),
                rng.integers(first_day, first_day + 365, size=n) + days_later,
                rng.choice([0, 1, 2], size=n, p=[0.6, 0.3, 0.1]),
            ]
        ).astype(float)

    ref = _reference(features, rows(3000), rng.beta(2, 5, size=3000))
    # Only the model's score moved: the features are drawn as in training.
    scored = _insert_job(
        engine, ref, [_counts(ref, rows(200), rng.beta(5, 2, size=200)) for _ in range(10)]
    )
    dated = _insert_job(
        engine, ref, [_counts(ref, rows(200, 400), rng.beta(2, 5, size=200)) for _ in range(10)]
    )
    tiny = _insert_job(engine, ref, [_counts(ref, rows(2), rng.beta(2, 5, size=2))])
    live = _insert_job(engine, ref, [_counts(ref, rows(100), rng.beta(2, 5, size=100))], pending=4)

    with dashboard(process_env(migrated), tmp_path / "dashboard.log") as url:
        page = httpx.get(f"{url}/jobs/{scored}", timeout=30).text
        table = _drift_table(page)
        assert table["(model score)"][0] == "drifted"
        assert [n for n, (kind, _) in table.items() if kind == "drifted"] == ["(model score)"]
        drawn = svg_texts(page)
        assert "(model score)" in drawn  # a bar of its own in the PSI chart
        assert any(t.startswith("(model score): training against this job") for t in drawn)

        page = httpx.get(f"{url}/jobs/{dated}", timeout=30).text
        assert _drift_table(page)["signup"][0] == "drifted"
        drawn = svg_texts(page)
        assert any(t.startswith("signup: training against this job") for t in drawn)
        days = [t for t in drawn if re.fullmatch(r"(< |≥ )?2019-\d\d-\d\d( to 2019-\d\d-\d\d)?", t)]
        assert len(days) >= 8, drawn
        assert not [t for t in drawn if "e+0" in t], drawn

        page = httpx.get(f"{url}/jobs/{tiny}", timeout=30).text
        table = _drift_table(page)
        assert not [n for n, (kind, _) in table.items() if kind == "drifted"], table
        found = re.search(r"Too few rows to judge drift: 2 scored, ([0-9,]+) needed", page)
        assert found, page
        needed = int(found.group(1).replace(",", ""))
        # The number is the least at which a sample of training's own rows passes the warning
        # less than one time in twenty, for every feature and the score; half of it would not do.
        layouts = [*ref["profile"]["features"].values(), ref["profile"]["score"]]
        alarms = [_false_alarms(layout["shares"], needed) for layout in layouts]
        assert max(alarms) <= 0.06, (needed, alarms)
        assert max(_false_alarms(layout["shares"], needed // 2) for layout in layouts) > 0.05

        jobs = httpx.get(f"{url}/jobs", timeout=30).text
        listed = {cells[0]: (kind, cells) for kind, cells in table_rows(jobs) if cells}
        header = next(cells for _, cells in table_rows(jobs) if cells and cells[0] == "job")
        column = header.index("drift")
        assert "(model score)" in listed[str(scored)][1][column]
        assert "signup" in listed[str(dated)][1][column]
        assert "too few rows" in listed[str(tiny)][1][column]
        assert '<meta http-equiv="refresh" content="5">' in jobs  # a job is running

        browser = Browser(screenshots)
        browser.screenshot(f"{url}/jobs", "jobs")
        browser.screenshot(f"{url}/jobs/{scored}", "job-score-drift")
        browser.screenshot(f"{url}/jobs/{dated}", "job-date-drift")
        browser.screenshot(f"{url}/jobs/{tiny}", "job-two-rows")
        browser.screenshot(f"{url}/jobs/{live}", "job-running")


# --- the prediction log -----------------------------------------------------------------------


def test_the_prediction_log_axis_spans_its_data_not_years(
    migrated: Settings, engine: Engine, tmp_path: Path, screenshots: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scorebox_prediction_log (logged_at, model_tag, request_id, features, "
                "prediction) SELECT now() - make_interval(secs => g), 'scorebox-test:v1', "
                "'r' || g, '{}', '{}' FROM generate_series(1, 30) g"
            )
        )
    with dashboard(process_env(migrated), tmp_path / "dashboard.log") as url:
        page = httpx.get(f"{url}/log", timeout=30)
        assert page.status_code == 200
        assert "30 online predictions logged in the last 24 hours" in page.text
        drawn = svg_texts(page.text)
        times = [t for t in drawn if re.fullmatch(r"\d\d:\d\d", t)]
        assert len(times) >= 3, drawn
        # Ticks in the axis's order, from left to right; a step past midnight is a step too.
        minutes = [int(t[:2]) * 60 + int(t[3:]) for t in times]
        span = sum((b - a) % (24 * 60) for a, b in itertools.pairwise(minutes))
        assert span <= 90, times  # the last hour or so, not years
        assert not [t for t in drawn if re.fullmatch(r"(19|20)\d\d", t)], drawn
        Browser(screenshots).screenshot(f"{url}/log", "log")


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
