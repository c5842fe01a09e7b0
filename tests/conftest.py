"""Real-server fixtures: each test run gets its own PostgreSQL database, each test its own
schema (through search_path), its own BentoML home and its own Redis db number."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# BentoML reads its home when first imported: point it at this run's directory before that.
_BENTO_HOME = Path(tempfile.mkdtemp(prefix="scorebox-test-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTO_HOME)
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
from scorebox.settings import NOT_SETTINGS  # noqa: E402

# This run's own signing key and trusted keys (the defaults under XDG_CONFIG_HOME, created by the
# first training), never the machine's.
CONFIG_HOME = Path(tempfile.mkdtemp(prefix="scorebox-test-config-"))
os.environ["XDG_CONFIG_HOME"] = str(CONFIG_HOME)
for _name in [n for n in os.environ if n.startswith("SCOREBOX_") and n not in NOT_SETTINGS]:
    del os.environ[_name]

import psycopg  # noqa: E402
import pytest  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

from scorebox.db import make_engine  # noqa: E402
from scorebox.migrate import upgrade  # noqa: E402
from scorebox.modelinfo import ModelInfo  # noqa: E402
from scorebox.seed import seed  # noqa: E402
from scorebox.settings import Settings, load_settings  # noqa: E402
from scorebox_cli.processes import child_env, serving  # noqa: E402
from worker.celery_app import chunk_sender, make_app  # noqa: E402
from worker.client import ServiceClient  # noqa: E402

PG_HOST = os.environ.get("SCOREBOX_TEST_PG_HOST", "127.0.0.1")
PG_ADMIN = f"host={PG_HOST} port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of this run's own (1-15), emptied before and after."""
    import redis

    db = 1 + uuid.uuid4().int % 15
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    yield f"redis://127.0.0.1:6379/{db}"
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    """This run's BentoML home (model store)."""
    return _BENTO_HOME


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A database of this run's own, dropped at the end."""
    name = f"scorebox_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_url(database: str, schema: str) -> str:
    """A URL of this run's ``database`` whose connections see only ``schema``."""
    options = quote(f"-csearch_path={schema}")
    return f"postgresql+psycopg://postgres@{PG_HOST}:5432/{database}?options={options}"


def new_schema(database: str, prefix: str) -> tuple[str, str]:
    """A new schema in this run's ``database`` named ``prefix_...``, and a URL that sees it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        f"host={PG_HOST} user=postgres dbname={database}", autocommit=True
    ) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return name, schema_url(database, name)


@pytest.fixture
def schema(database: str) -> str:
    """A fresh schema in this run's database, for one test."""
    return new_schema(database, "t")[0]


@pytest.fixture
def database_url(database: str, schema: str) -> str:
    """A URL whose connections see only this test's schema."""
    return schema_url(database, schema)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for this test: its own schema, the default table names."""
    return load_settings(database_url=database_url, model_name="scorebox-test")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """An engine on this test's schema."""
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for running scorebox processes with ``settings``."""
    base = child_env()
    return base | {
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_MODEL_NAME": settings.model_name,
        "BENTOML_HOME": str(_BENTO_HOME),
        **extra,
    }


def service_worker_pid(port: int) -> int:
    """The pid of the only worker process of the service on ``port`` (started by
    :func:`scorebox_cli.processes.serving`, whose BentoML home is named after its port)."""
    import psutil

    for process in psutil.process_iter(["cmdline", "environ"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        home = (process.info["environ"] or {}).get("BENTOML_HOME", "")
        if "_bentoml_impl.worker.service" in cmdline and home.endswith(f"bentoml-home-{port}"):
            return int(process.pid)
    raise AssertionError(f"no worker of the service on port {port}")


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """The folder for a test's screenshots: $SCOREBOX_SCREENSHOTS if set, else in its tmp_path."""
    given = os.environ.get("SCOREBOX_SCREENSHOTS")
    folder = Path(given) if given else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """Environment for running scorebox commands as processes against this test's schema."""
    return process_env(settings)


@dataclass(frozen=True)
class TrainedModel:
    """The example model, trained once a run for the tests that serve or score with it."""

    settings: Settings
    tag: str
    info: ModelInfo


@pytest.fixture(scope="session")
def trained(database: str) -> TrainedModel:
    """Seed the example table in a schema of its own and train the model on it."""
    from training import train

    _, url = new_schema(database, "served")
    settings = load_settings(database_url=url, model_name="served")
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, settings.predictions_table)
        with engine.begin() as conn:
            seed(conn, settings.feature_table, id_column="id", target_column="target")
        result = train(settings, engine)
    finally:
        engine.dispose()
    return TrainedModel(settings, result.tag, result.info)


@pytest.fixture(scope="session")
def service_url(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service (`bentoml serve .`) over the trained example model, without auth."""
    log = tmp_path_factory.mktemp("service") / "serve.log"
    with serving(process_env(trained.settings), log) as url:
        yield url


@pytest.fixture
def scoring(
    settings: Settings, engine: Engine, redis_url: str, service_url: str, trained: TrainedModel
) -> Settings:
    """This test's schema, migrated and seeded; settings that point at the served model."""
    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target")
    # Workers of the served model's deployment: its name gives their queue.
    return settings.model_copy(
        update={
            "redis_url": redis_url,
            "service_url": service_url,
            "chunk_size": 100,
            "model_name": trained.settings.model_name,
        }
    )


@pytest.fixture
def enqueue(scoring: Settings) -> Iterator[Callable[[int, int, str], None]]:
    """Queue chunks on this run's Redis database, as the CLI does."""
    app = make_app(scoring)
    yield chunk_sender(app)
    app.close()


@pytest.fixture
def client(service_url: str) -> Iterator[ServiceClient]:
    client = ServiceClient(service_url, None, 30)
    yield client
    client.close()
