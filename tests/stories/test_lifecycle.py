"""The model lifecycle with real PostgreSQL, Redis, `bentoml serve` and `celery worker`: the
registry in the database, aliases and their history, a service that follows an alias under load,
jobs pinned to the version an alias named, champion/challenger compared on a labelled table,
and the promotion gate both ways."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score
from sqlalchemy import Engine, text

from scorebox.db import make_engine
from scorebox.migrate import upgrade
from scorebox.seed import seed
from scorebox.settings import Settings, load_settings
from scorebox_cli.processes import BIN, serving, working
from tests.conftest import new_schema, process_env

NAME = "lifecycle"


@dataclass(frozen=True)
class Registry:
    """A schema with the example table, migrated, and two registered versions of one model."""

    settings: Settings
    engine: Engine
    v1: str  # HistGradientBoosting
    v2: str  # random forest
    v3: str  # regression on the same table: not a replacement for the others


@pytest.fixture(scope="module")
def registry(database: str, redis_url: str) -> Iterator[Registry]:
    from training import train

    _, url = new_schema(database, "life")
    settings = load_settings(
        database_url=url,
        model_name=NAME,
        redis_url=redis_url,
        chunk_size=200,
    )
    engine = make_engine(settings.database_url)
    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target")
    v1 = train(settings, engine).tag
    v2 = train(settings.model_copy(update={"estimator": "random_forest"}), engine).tag
    v3 = train(settings.model_copy(update={"task": "regression"}), engine).tag
    yield Registry(settings, engine, v1, v2, v3)
    engine.dispose()


def _cli(registry: Registry, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "scorebox"), *args],
        env=process_env(registry.settings, SCOREBOX_REDIS_URL=registry.settings.redis_url, **extra),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _alias(registry: Registry, alias: str) -> str | None:
    with registry.engine.connect() as conn:
        return conn.execute(
            text("SELECT tag FROM scorebox_aliases WHERE name = :n AND alias = :a"),
            {"n": NAME, "a": alias},
        ).scalar()


def test_training_records_each_version_and_aliases_move_with_their_history(
    registry: Registry,
) -> None:
    listed = _ok(_cli(registry, "models", "list"))
    assert registry.v1 in listed and registry.v2 in listed
    with registry.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT tag, length(artifact), artifact_sha256, created_by FROM scorebox_models")
        ).all()
    assert {r[0] for r in rows} == {registry.v1, registry.v2, registry.v3}
    # Who inserted it is the database's role, as the database recorded it.
    assert all(r[1] > 10_000 and len(r[2]) == 64 and r[3] == "postgres" for r in rows)

    assert "(new) -> " + registry.v1 in _ok(
        _cli(registry, "models", "alias", "champion", registry.v1)
    )
    version = registry.v2.partition(":")[2]  # a bare version names one too
    assert f"{registry.v1} -> {registry.v2}" in _ok(
        _cli(registry, "models", "alias", "champion", version)
    )
    rolled = _ok(_cli(registry, "models", "alias", "champion", "--rollback"))
    assert f"{registry.v2} -> {registry.v1} (rolled back)" in rolled
    assert _alias(registry, "champion") == registry.v1
    again = _cli(registry, "models", "alias", "champion", "--rollback")
    assert again.returncode == 1 and "no earlier version to roll back to" in again.stderr
    assert f"removed (it pointed at {registry.v1})" in _ok(
        _cli(registry, "models", "unalias", "champion")
    )
    assert _alias(registry, "champion") is None
    _ok(_cli(registry, "models", "alias", "champion", "--rollback"))
    assert _alias(registry, "champion") == registry.v1
    history = _ok(_cli(registry, "models", "history", "champion")).splitlines()
    actions = [re.search(r" (\w+) by postgres \(", line) for line in history]
    assert [m.group(1) if m else line for m, line in zip(actions, history, strict=True)] == [
        "move",
        "move",
        "rollback",
        "remove",
        "rollback",
    ]
    shown = _ok(_cli(registry, "models", "show", "champion"))
    assert registry.v1 in shown and "aliases: champion" in shown

    # A version its services could not switch to is refused, unless forced.
    refused = _cli(registry, "models", "alias", "champion", registry.v3)
    assert refused.returncode == 1 and "it is regression, not classification" in refused.stderr
    assert _alias(registry, "champion") == registry.v1
    for bad, message in [
        (
            ("alias", "champion", "nosuchversion"),
            "no model lifecycle:nosuchversion in the registry",
        ),
        (("alias", "champion", ""), "'' names no version of lifecycle"),
        (("show", "lifecycle:AbC!"), "'AbC!' names no version of lifecycle"),
        (("promote", "latest", "--if", ""), "write METRIC OP champion"),
        (("promote", "latest", "--if", "accuracy >= -1e999"), "numbers must be finite"),
        (
            ("promote", registry.v2, "--to", "champoin", "--if", "accuracy >= champoin"),
            "champoin, which points at no version (a typo?)",
        ),
        (("alias", "Champion!", registry.v2), "alias 'Champion!': use a plain lower-case name"),
        (("alias", "latest", registry.v2), "not `latest`"),
        (("show", "other:abc"), "other:abc is not a version of model lifecycle"),
        (("unalias", "nobody"), "model lifecycle has no alias 'nobody'"),
    ]:
        done = _cli(registry, "models", *bad)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_machine_with_an_empty_store_serves_an_alias_from_the_registry(
    registry: Registry, tmp_path: Path
) -> None:
    _ok(_cli(registry, "models", "alias", "champion", registry.v1))
    home = tmp_path / "empty-home"
    (home / "models").mkdir(parents=True)
    env = process_env(
        registry.settings,
        BENTOML_HOME=str(home),
        SCOREBOX_MODEL_TAG="champion",
        SCOREBOX_MODEL_POLL_SECONDS="0.5",
        SCOREBOX_SERVICE_WORKERS="1",
    )
    with serving(env, tmp_path / "serve.log") as url:
        described = httpx.get(f"{url}/v1/model").json()
        assert (described["tag"], described["ref"], described["follows"]) == (
            registry.v1,
            "champion",
            True,
        )
        assert (home / "models" / NAME / registry.v1.partition(":")[2]).is_dir()
        record = {f["name"]: 1.0 for f in described["features"]}
        assert (
            httpx.post(f"{url}/predict", json={"records": [record]}).json()["model"] == registry.v1
        )

        # A corrupted archive in the registry is refused; the old version keeps serving.
        with registry.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE scorebox_models SET artifact = artifact || '\\x00'::bytea "
                    "WHERE tag = :t"
                ),
                {"t": registry.v2},
            )
        try:
            _ok(_cli(registry, "models", "alias", "champion", registry.v2))
            deadline = time.monotonic() + 20
            while not httpx.get(f"{url}/v1/model").json()["switch_error"]:
                assert time.monotonic() < deadline, "the bad version was never looked at"
                time.sleep(0.2)
            described = httpx.get(f"{url}/v1/model").json()
            assert described["tag"] == registry.v1
            assert f"refused {registry.v2}, kept serving {registry.v1}" in described["switch_error"]
            assert "refusing to import it" in described["switch_error"]
            answer = httpx.post(f"{url}/predict", json={"records": [record]})
            assert answer.status_code == 200 and answer.json()["model"] == registry.v1
        finally:
            with registry.engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE scorebox_models SET artifact = substring(artifact FROM 1 FOR "
                        "length(artifact) - 1) WHERE tag = :t"
                    ),
                    {"t": registry.v2},
                )
            _ok(_cli(registry, "models", "alias", "champion", registry.v1))

        # Forced onto a version of another task: the service refuses to switch.
        _ok(_cli(registry, "models", "alias", "champion", registry.v3, "--force"))
        deadline = time.monotonic() + 20
        while not (httpx.get(f"{url}/v1/model").json()["switch_error"] or "").startswith(
            f"refused {registry.v3}"
        ):
            assert time.monotonic() < deadline, httpx.get(f"{url}/v1/model").json()
            time.sleep(0.2)
        described = httpx.get(f"{url}/v1/model").json()
        assert described["tag"] == registry.v1
        assert "it is regression, not classification" in described["switch_error"]
        assert "restart the service" in described["switch_error"]
        _ok(_cli(registry, "models", "alias", "champion", registry.v1, "--force"))
        # Pinned versions the service cannot hold are a 409 naming why, never a 500.
        for pinned in (
            f"{NAME}:" + "a" * 80,
            f"{NAME}:abc-",
            f"{NAME}:",
            "other:abc",
            "../../etc/passwd",
            f"{NAME}:nosuchversion",
        ):
            answer = httpx.post(
                f"{url}/predict", json={"records": [record]}, headers={"x-scorebox-model": pinned}
            )
            assert answer.status_code == 409, (pinned, answer.text)
            assert "cannot serve" in answer.json()["error"]
    assert "refused " + registry.v2 in (tmp_path / "serve.log").read_text()


async def _hammer(url: str, record: dict[str, float], stop: asyncio.Event) -> list[tuple[int, str]]:
    """One keep-alive connection sending single records until ``stop``; (status, tag) of each."""
    seen: list[tuple[int, str]] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        while not stop.is_set():
            response = await client.post("/predict", json={"records": [record]})
            tag = response.json().get("model", "") if response.status_code == 200 else ""
            seen.append((response.status_code, tag))
    return seen


def test_service_switches_versions_under_load_without_a_failed_request(
    registry: Registry, tmp_path: Path
) -> None:
    _ok(_cli(registry, "models", "alias", "champion", registry.v1))
    env = process_env(
        registry.settings, SCOREBOX_MODEL_TAG="champion", SCOREBOX_MODEL_POLL_SECONDS="0.5"
    )
    with serving(env, tmp_path / "serve.log") as url:
        features = httpx.get(f"{url}/v1/model").json()["features"]
        record = {f["name"]: 0.5 for f in features}

        async def run() -> list[list[tuple[int, str]]]:
            stop = asyncio.Event()
            clients = [asyncio.create_task(_hammer(url, record, stop)) for _ in range(32)]
            await asyncio.sleep(3)
            moved = await asyncio.to_thread(
                _cli, registry, "models", "alias", "champion", registry.v2
            )
            assert moved.returncode == 0, moved.stderr
            await asyncio.sleep(4)
            back = await asyncio.to_thread(
                _cli, registry, "models", "alias", "champion", "--rollback"
            )
            assert back.returncode == 0, back.stderr
            await asyncio.sleep(4)
            stop.set()
            return await asyncio.gather(*clients)

        results = asyncio.run(run())
        described = httpx.get(f"{url}/v1/model").json()
    assert (described["tag"], described["switches"], described["switch_error"]) == (
        registry.v1,
        2,
        None,
    )
    answers = [answer for client in results for answer in client]
    assert len(answers) > 500
    assert {status for status, _ in answers} == {200}
    assert {tag for _, tag in answers} == {registry.v1, registry.v2}
    for client in results:
        tags = [tag for _, tag in client]
        switches = sum(a != b for a, b in itertools.pairwise(tags))
        assert tags[0] == registry.v1 and tags[-1] == registry.v1 and switches == 2, switches
    print(f"hot switch: {len(answers)} answers in 11 s, 32 clients, 2 moves, all 200")


def _predictions(registry: Registry, tag: str) -> pd.DataFrame:
    with registry.engine.connect() as conn:
        return pd.read_sql(
            text(
                "SELECT p.row_id, p.predicted_label, p.probabilities, f.target FROM predictions p "
                "JOIN features f ON p.row_id = CAST(f.id AS text) WHERE p.model_tag = :t"
            ),
            conn,
            params={"t": tag},
        )


def test_jobs_pin_the_alias_and_the_challenger_is_compared_and_promoted_by_its_gate(
    registry: Registry, tmp_path: Path
) -> None:
    _ok(_cli(registry, "models", "alias", "champion", registry.v1))
    _ok(_cli(registry, "models", "alias", "challenger", registry.v2))
    env = process_env(registry.settings, SCOREBOX_MODEL_TAG="champion")
    with serving(env, tmp_path / "serve.log") as url:
        worker_env = process_env(
            registry.settings,
            SCOREBOX_REDIS_URL=registry.settings.redis_url,
            SCOREBOX_SERVICE_URL=url,
            SCOREBOX_CHUNK_SIZE="200",
        )
        with working(worker_env, tmp_path / "worker.log"):
            first = _cli(registry, "score", "--wait", SCOREBOX_SERVICE_URL=url)
            second = _cli(
                registry, "score", "--wait", "--model", "challenger", SCOREBOX_SERVICE_URL=url
            )
    assert "succeeded - 569 scored" in _ok(first)
    assert f"{registry.v2} as challenger" in _ok(second)
    with registry.engine.connect() as conn:
        jobs = conn.execute(
            text("SELECT model_tag, model_ref FROM scorebox_jobs ORDER BY id")
        ).all()
    assert [tuple(j) for j in jobs] == [(registry.v1, None), (registry.v2, "challenger")]

    champion, challenger = _predictions(registry, registry.v1), _predictions(registry, registry.v2)
    assert len(champion) == len(challenger) == 569
    both = champion.merge(challenger, on=["row_id", "target"], suffixes=("_a", "_b"))
    truth = both["target"].astype(str)
    expected = {
        "accuracy": (
            accuracy_score(truth, both["predicted_label_a"]),
            accuracy_score(truth, both["predicted_label_b"]),
        ),
        "roc_auc": (
            roc_auc_score(truth == "1", [p["1"] for p in both["probabilities_a"]]),
            roc_auc_score(truth == "1", [p["1"] for p in both["probabilities_b"]]),
        ),
    }
    agreement = float(np.mean(both["predicted_label_a"] == both["predicted_label_b"]))

    with registry.engine.begin() as conn:  # the same labels stored as floating point
        conn.execute(text("ALTER TABLE features ADD COLUMN IF NOT EXISTS label_f float"))
        conn.execute(text("UPDATE features SET label_f = target"))
    as_float = _ok(
        _cli(
            registry,
            "models",
            "compare",
            "champion",
            "challenger",
            "--labels",
            "label_f",
            "--training-rows",
            "--out",
            str(tmp_path / "f"),
        )
    )
    a, b = expected["accuracy"]
    assert f"accuracy: {a:.4f} -> {b:.4f}" in as_float
    wrong = _cli(registry, "models", "compare", "champion", "challenger", "--labels", "mean_radius")
    assert wrong.returncode == 1 and "match none of the model's classes" in wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1

    out = tmp_path / "reports"
    compared = _ok(
        _cli(
            registry,
            "models",
            "compare",
            "champion",
            "challenger",
            "--labels",
            "target",
            "--training-rows",
            "--out",
            str(out),
        )
    )
    assert f"agreement {agreement:.2%}" in compared
    for metric, (a, b) in expected.items():
        line = next(row for row in compared.splitlines() if row.startswith(f"{metric}:"))
        assert line.startswith(f"{metric}: {a:.4f} -> {b:.4f} ({b - a:+.4f}, 95% interval [")
        low, high = map(float, re.findall(r"\[([-+0-9.]+), ([-+0-9.]+)\]", line)[0])
        assert low <= b - a <= high
    report = Path(compared.split("report: ")[1].strip())
    assert report.exists() and report.with_suffix(".png").stat().st_size > 5_000
    assert (
        f"| roc_auc | {expected['roc_auc'][0]:.4f} | {expected['roc_auc'][1]:.4f} |"
        in report.read_text()
    )

    # The gate on the labelled rows, both ways.
    refused = _cli(
        registry,
        "models",
        "promote",
        "challenger",
        "--to",
        "champion",
        "--if",
        "roc_auc >= champion + 0.5",
        "--labels",
        "target",
        "--training-rows",
    )
    assert refused.returncode == 1
    assert f"not promoted: roc_auc {expected['roc_auc'][1]:.4f} < champion " in refused.stdout
    assert _alias(registry, "champion") == registry.v1
    promoted = _ok(
        _cli(
            registry,
            "models",
            "promote",
            "challenger",
            "--to",
            "champion",
            "--if",
            "accuracy >= champion - 1",
            "--labels",
            "target",
        )
    )
    assert f"promoted {registry.v2} to champion (was {registry.v1})" in promoted
    assert _alias(registry, "champion") == registry.v2
    history = _ok(_cli(registry, "models", "history", "champion"))
    assert "promote: accuracy" in history.splitlines()[-1]
    bad = _cli(registry, "models", "promote", "challenger", "--if", "roc_auc >> 3")
    assert bad.returncode == 1 and "write METRIC OP champion" in bad.stderr
