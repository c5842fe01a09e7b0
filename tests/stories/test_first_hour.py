"""The first hour of a new user: every mistake is one line naming the problem and the fix, within
seconds; no job hangs; help, settings, listings and the service's front page read well."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from scorebox.settings import Settings
from scorebox_cli.processes import BIN, free_port, working
from tests.conftest import TrainedModel, process_env
from tests.dashboards import Browser
from tests.scoring import env_for

SEED = "CREATE TABLE features (id int PRIMARY KEY, x float, target int); "
ROWS = "INSERT INTO features SELECT g, g, g % 2 FROM generate_series(1, {n}) g"


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "scorebox"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


# (command, settings to change, SQL run first, what the one line must say)
USER_ERRORS = [
    (
        ["train"],
        {"SCOREBOX_FEATURE_TABLE": "nowhere"},
        "",
        "table 'nowhere' (SCOREBOX_FEATURE_TABLE) does not exist in the database; create it",
    ),
    (
        ["train"],
        {"SCOREBOX_FEATURE_TABLE": "customerfeatures2"},
        'CREATE TABLE "CustomerFeatures2" (id int)',
        "did you mean 'CustomerFeatures2'? Names are case-sensitive",
    ),
    (
        ["train"],
        {"SCOREBOX_FEATURE_TABLE": "ml.features"},
        "",
        "schema 'ml' (SCOREBOX_FEATURE_TABLE) does not exist",
    ),
    (
        ["train"],
        {"SCOREBOX_ID_COLUMN": "visit"},
        SEED,
        "column 'visit' (SCOREBOX_ID_COLUMN) is not in table",
    ),
    (
        ["train"],
        {"SCOREBOX_TARGET_COLUMN": "Target"},
        SEED,
        "column 'Target' (SCOREBOX_TARGET_COLUMN) is not in table",
    ),
    (["train"], {}, SEED, "has no rows to train on"),
    (["train"], {}, SEED + ROWS.format(n=3), "has 3 usable row(s); at least 10 are needed"),
    (
        ["train"],
        {},
        SEED + "INSERT INTO features SELECT g, g, 1 FROM generate_series(1, 30) g",
        "the target has a single class (1); nothing to learn",
    ),
    (
        ["train"],
        {},
        SEED + "INSERT INTO features SELECT g, g, NULL FROM generate_series(1, 30) g",
        "target column 'target' is NULL in every row",
    ),
    (
        ["train"],
        {},
        "CREATE TABLE features (id int, x float, target int); "
        "INSERT INTO features VALUES (1, 1, 0), (1, 2, 1)",
        "id column 'id' of '",
    ),
    (["train"], {"SCOREBOX_TEST_SIZE": "2"}, "", "SCOREBOX_TEST_SIZE: Input should be less than 1"),
    (
        ["train"],
        {"SCOREBOX_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/scorebox"},
        "",
        "cannot reach the database at postgresql+psycopg://postgres@127.0.0.1:1/scorebox "
        '(SCOREBOX_DATABASE_URL): connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused",
    ),
    (
        ["train"],
        {"SCOREBOX_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/no_such_db"},
        "",
        'database "no_such_db" does not exist',
    ),
    (
        ["train"],
        {"SCOREBOX_DATABASE_URL": "postgresql://nobody@127.0.0.1:5432/scorebox"},
        "",
        'role "nobody" does not exist',
    ),
    (
        ["db", "upgrade"],
        {"SCOREBOX_PREDICTIONS_TABLE": "ml.preds"},
        "",
        "schema 'ml' of SCOREBOX_PREDICTIONS_TABLE='ml.preds' does not exist; create it",
    ),
    (["score"], {}, "", "scorebox's tables are missing: run `scorebox db upgrade`"),
    (["jobs", "list"], {}, "", "scorebox's tables are missing: run `scorebox db upgrade`"),
    (
        ["seed", "--example", "titanic"],
        {},
        "",
        "no example 'titanic'; choose one of breast_cancer, penguins",
    ),
    (["seed", "--rows", "0"], {}, "", "--rows must be at least 1, got 0"),
]


@pytest.mark.parametrize(("args", "changes", "prepare", "message"), USER_ERRORS)
def test_every_user_error_is_one_line_with_exit_1_within_5_seconds(
    env: dict[str, str],
    engine: Engine,
    args: list[str],
    changes: dict[str, str],
    prepare: str,
    message: str,
) -> None:
    if prepare:
        with engine.begin() as conn:
            for statement in prepare.split("; "):
                conn.execute(text(statement))
    code, out, err, took = _run(args, env | changes)
    assert code == 1, out + err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: "), err
    assert message in err, err
    assert "Traceback" not in out + err
    assert took < 5, took


def test_score_errors_are_one_line_too(scoring: Settings, engine: Engine, tmp_path: Path) -> None:
    """The mistakes people make when they queue a job."""
    env = env_for(scoring)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE narrow AS SELECT id, mean_texture FROM features"))
        # An alias of the served model moved (by SQL) onto a version of another model.
        conn.execute(
            text(
                "INSERT INTO scorebox_models (tag, name, task, estimator, metrics, metadata, "
                "artifact, artifact_sha256, created_by) VALUES ('other:abc', 'other', "
                "'classification', 'x', '{}', '{}', '', '', 'x')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO scorebox_aliases (name, alias, tag, moved_by) "
                "VALUES ('served', 'foreign', 'other:abc', 'x')"
            )
        )
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (["score", "--table", "narrow"], {}, "column 'mean_radius' (a feature of model served:"),
        (["score", "--mode", "sometimes"], {}, "mode must be one of all, new, not 'sometimes'"),
        (["score", "--model", "served:nope"], {}, "--model: no model served:nope in the registry"),
        (["score", "--model", "other:abc"], {}, "serves model served; score with one of its"),
        (["score", "--model", "foreign"], {}, "points at other:abc, a version of another model"),
        (
            ["score"],
            {"SCOREBOX_SERVICE_URL": dead},
            f"service at {dead} (SCOREBOX_SERVICE_URL) unreachable",
        ),
        (
            ["score"],
            {"SCOREBOX_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
            "cannot reach the broker (SCOREBOX_REDIS_URL)",
        ),
        (
            ["score"],
            {"SCOREBOX_PREDICTIONS_TABLE": "renamed"},
            "predictions table 'renamed' (SCOREBOX_PREDICTIONS_TABLE) does not exist: "
            "run `scorebox db upgrade`",
        ),
        (["jobs", "show", "424242"], {}, "no job with id 424242"),
    ]
    # Table names no table can have, and an empty one (an unset "$T"): never the default table.
    for malformed in ('"', "a.b.c", " ", ".big", "..", "features\n", ""):
        cases.append((["score", "--table", malformed], {}, "--table: table name"))
    for args, changes, message in cases:
        code, out, err, took = _run(args, env | changes)
        assert code == 1 and message in err, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert took < 8, (args, took)  # the broker's connection attempt takes a few seconds


def test_score_latest_is_the_served_version(scoring: Settings) -> None:
    code, out, err, _ = _run(["score", "--model", "served:latest"], env_for(scoring))
    assert code == 0, err
    assert "queued" in out


def _start_waiting(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[str]:
    with (tmp_path / "score.out").open("w") as out:
        return subprocess.Popen(
            [str(BIN / "scorebox"), "score", "--wait"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _queued(engine: Engine) -> int:
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as conn:
            job = conn.execute(text("SELECT max(id) FROM scorebox_jobs")).scalar()
        if job is not None:
            return int(job)
        assert time.monotonic() < deadline
        time.sleep(0.1)


FAULTS = [
    # (what breaks after the job is queued, exit status of `score --wait`, what the job says)
    ("DROP TABLE predictions", 1, "a table is missing"),
    (
        "ALTER TABLE features DROP CONSTRAINT features_pkey; "
        "INSERT INTO features SELECT * FROM features WHERE id = 7",
        1,
        "the id column holds the same value twice within a chunk",
    ),
    ("UPDATE features SET mean_area = 'Infinity' WHERE id IN (3, 4)", 3, "succeeded_with_errors"),
    ("", 0, "succeeded - 569 scored"),
]


@pytest.mark.parametrize(("fault", "code", "message"), FAULTS)
def test_no_job_hangs_whatever_breaks(
    scoring: Settings, engine: Engine, tmp_path: Path, fault: str, code: int, message: str
) -> None:
    env = env_for(scoring, SCOREBOX_CHUNK_LEASE_SECONDS="5", SCOREBOX_SWEEP_SECONDS="1")
    waiting = _start_waiting(env, tmp_path)
    job_id = _queued(engine)
    if fault:
        with engine.begin() as conn:
            for statement in fault.split("; "):
                conn.execute(text(statement))
    with working(env, tmp_path / "worker.log"):
        waiting.wait(timeout=90)
    output = (tmp_path / "score.out").read_text()
    assert waiting.returncode == code, output
    assert message in output, output
    assert f"job {job_id}" in output


def test_service_down_for_good_ends_the_job_with_exit_1(
    scoring: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Transient errors are retried, boundedly: then the job fails and says why."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = env_for(scoring)
    waiting = _start_waiting(env, tmp_path)
    _queued(engine)
    with working(
        env | {"SCOREBOX_SERVICE_URL": dead, "SCOREBOX_SERVICE_RETRIES": "1"}, tmp_path / "w.log"
    ):
        waiting.wait(timeout=90)
    output = (tmp_path / "score.out").read_text()
    assert waiting.returncode == 1, output
    assert "gave up after 1 retries" in output and dead in output


def test_help_shows_defaults_and_where_settings_come_from(
    env: dict[str, str], tmp_path: Path
) -> None:
    screens = {}
    for args in (["--help"], ["score", "--help"], ["train", "--help"], ["jobs", "list", "--help"]):
        code, out, _, _ = _run(args, env | {"COLUMNS": "100"})
        assert code == 0
        screens[" ".join(args)] = " ".join(out.split())
    assert "[default: all]" in screens["score --help"]
    assert "[default: (SCOREBOX_FEATURE_TABLE)]" in screens["score --help"]
    for screen in screens.values():
        assert "SCOREBOX_* environment variables or a .env file" in screen
        assert "scorebox config" in screen
    (tmp_path / ".env").write_text(
        "SCOREBOX_FEATURE_TABLE=from_dotenv\nSCOREBOX_API_TOKEN=s3cret\n"
    )
    done = subprocess.run(
        [str(BIN / "scorebox"), "config"],
        env=env | {"SCOREBOX_CHUNK_SIZE": "123"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert re.search(r"from_dotenv\s+# \.env$", lines["SCOREBOX_FEATURE_TABLE"])
    assert re.search(r"123\s+# environment$", lines["SCOREBOX_CHUNK_SIZE"])
    assert re.search(r"latest\s+# default$", lines["SCOREBOX_MODEL_TAG"])
    assert "s3cret" not in done.stdout and "********" in lines["SCOREBOX_API_TOKEN"]


def test_job_list_fits_80_columns_and_is_plain_in_a_pipe(scoring: Settings, engine: Engine) -> None:
    env = env_for(scoring)
    for table in ("a_rather_long_table_name_for_scoring", "another_table"):
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} AS SELECT * FROM features LIMIT 10"))
        assert _run(["score", "--table", table], env)[0] == 0
    _, terminal, _, _ = _run(["jobs", "list"], env | {"COLUMNS": "80", "FORCE_COLOR": "1"})
    plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal)
    assert all(len(line) <= 80 for line in plain.splitlines()), plain
    assert "queued" in plain and ".a_rather_long_table_name_for_scoring ·" in plain
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", plain)
    _, piped, _, _ = _run(["jobs", "list"], env)
    rows = [line.split("\t") for line in piped.splitlines() if line]
    assert rows[0][:3] == ["id", "status", "rows_scored"] and len({len(r) for r in rows}) == 1
    assert any(r[6].endswith(".a_rather_long_table_name_for_scoring") for r in rows[1:])


def test_an_empty_table_says_there_is_nothing_to_score(
    scoring: Settings, engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE empty_one AS SELECT * FROM features LIMIT 0"))
    code, out, err, _ = _run(["score", "--wait", "--table", "empty_one"], env_for(scoring))
    assert code == 0, err
    assert "nothing to score" in out and "has no rows" in out
    assert "0/1" not in out


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_front_page_in_a_real_browser(
    service_url: str, trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    browser = Browser(tmp_path_factory.mktemp("front-page"), width=1200, height=1800)
    dom = browser.dom(f"{service_url}/")
    shot = browser.screenshot(f"{service_url}/", "front-page")
    print(f"\nfront page screenshot: {shot}")
    assert f"scorebox · {trained.tag}" in dom
    assert "This is a Machine Learning Service created with BentoML" not in dom
    assert "Contact BentoML Team" not in dom
    paths = ("/predict", "/v1/predict/arrow", "/v1/model", "/docs.json", "/schema.json", "/readyz")
    for path in (*paths, "/metrics"):
        assert path in dom, path
    for name in trained.info.feature_names:
        assert name in dom
    assert "SCOREBOX_API_TOKEN" in dom
    # The page's example call works against this very service.
    curl = re.search(r"<pre>(curl -s -X POST [^<]*/predict[^<]*)</pre>", dom)
    assert curl is not None
    import html

    command = html.unescape(curl.group(1))
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert '"predictions"' in done.stdout, done.stdout + done.stderr
    python = re.search(r"<pre>(import os, httpx[^<]*)</pre>", dom)
    assert python is not None
    done = subprocess.run(
        [sys.executable, "-c", html.unescape(python.group(1))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "'error': None, 'predicted_label': " in done.stdout, done.stdout + done.stderr
    client = re.search(r"<pre>(import os, bentoml[^<]*)</pre>", dom)
    assert client is not None
    done = subprocess.run(
        [sys.executable, "-c", html.unescape(client.group(1))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{{'model': '{trained.tag}', 'predictions': [{{'prediction': " in done.stdout, (
        done.stdout + done.stderr
    )


def _readme_block(heading: str) -> str:
    """The first shell block under ``heading`` in README.md."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split(f"\n{heading}\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_readme_use_your_own_table_works_as_written(
    settings: Settings, redis_url: str, bentoml_home: Path, tmp_path: Path
) -> None:
    """The README's walk-through, run by bash line by line, in a fresh folder holding only
    bentofile.yaml; only the database, Redis database and port are this test's own."""
    port = free_port()
    shutil.copy(Path(__file__).parents[2] / "bentofile.yaml", tmp_path)
    script = _readme_block("## Use your own table").replace("localhost:3000", f"localhost:{port}")
    env = process_env(settings) | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_REDIS_URL": redis_url,
        "SCOREBOX_SERVICE_URL": f"http://127.0.0.1:{port}",
        "BENTOML_PORT": str(port),
        "BENTOML_HOME": str(bentoml_home),
    }
    env.pop("SCOREBOX_MODEL_NAME")  # the walk-through names its model in .env
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "SCOREBOX_FEATURE_TABLE" in output and "# .env" in output
    assert "344 rows inserted into penguins" in output
    assert "registered penguins:" in output and "left out: Field Notes: free text" in output
    assert "succeeded - 344 scored, 0 failed of 344 rows" in output
