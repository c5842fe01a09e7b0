"""The real service (`bentoml serve .`) over the example model, called over HTTP."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
import yaml
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from scorebox.catalog import Catalog, Version
from scorebox.compiled import ONNX_ARTIFACT
from scorebox.errors import ModelError
from scorebox.migrate import upgrade
from scorebox.modelinfo import ARTIFACT
from scorebox.seed import seed
from scorebox.settings import Settings
from scorebox_cli.processes import BIN, ROOT, free_port, serving, stop
from tests.conftest import TrainedModel, process_env


def _rows(trained: TrainedModel, limit: int) -> pd.DataFrame:
    dsn = trained.settings.database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM features ORDER BY id LIMIT {int(limit)}")
        names = [d.name for d in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=names)


def _records(trained: TrainedModel, rows: pd.DataFrame) -> list[dict[str, float]]:
    return rows[trained.info.feature_names].astype(float).to_dict("records")


def _arrow(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def test_json_predictions_equal_the_models_own(service_url: str, trained: TrainedModel) -> None:
    rows = _rows(trained, 60)
    response = httpx.post(f"{service_url}/predict", json={"records": _records(trained, rows)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == trained.tag
    pipeline = bentoml.sklearn.load_model(trained.tag)
    features = rows[trained.info.feature_names].astype(float)
    expected = pipeline.predict_proba(features)
    got = np.array(
        [[p["probabilities"]["0"], p["probabilities"]["1"]] for p in body["predictions"]]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert [p["prediction"] for p in body["predictions"]] == pipeline.predict(features).tolist()


def test_single_record_object_is_accepted(service_url: str, trained: TrainedModel) -> None:
    record = _records(trained, _rows(trained, 1))[0]
    response = httpx.post(f"{service_url}/predict", json={"records": record})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1


def test_null_feature_is_imputed(service_url: str, trained: TrainedModel) -> None:
    record: dict[str, float | None] = dict(_records(trained, _rows(trained, 1))[0])
    record["mean_radius"] = None
    response = httpx.post(f"{service_url}/predict", json={"records": [record]})
    assert response.status_code == 200


def _bad_cases(record: dict[str, float]) -> list[tuple[str, bytes, int, str]]:
    import json

    def body(records: object) -> bytes:
        return json.dumps({"records": records}).encode()

    missing = {k: v for k, v in record.items() if k != "mean_area"}
    return [
        ("extra field", body([record, record | {"colour": 1.0}]), 422, "records[1].colour"),
        ("missing field", body([missing]), 422, "records[0].mean_area: Field required"),
        ("text value", body([record | {"mean_radius": "big"}]), 422, "records[0].mean_radius"),
        ("bool value", body([record | {"mean_radius": True}]), 422, "records[0].mean_radius"),
        # JSON has no NaN or infinity: such bodies are not JSON
        (
            "NaN",
            body([record]).replace(b'"mean_texture": ', b'"mean_texture": NaN, "x": '),
            400,
            "malformed JSON body",
        ),
        (
            "infinity",
            body([record]).replace(b'"mean_texture": ', b'"mean_texture": Infinity, "x": '),
            400,
            "malformed JSON body",
        ),
        (
            "huge number",
            body([record]).replace(b'"mean_texture": ', b'"mean_texture": 1e999, "x": '),
            400,
            "malformed JSON body",
        ),
        ("null", body([record | {"mean_texture": None}]), 200, '"predictions"'),
        ("empty list", body([]), 422, "records: "),
        ("no records key", b"{}", 422, "records: Field required"),
        ("other key", b'{"records": [], "extra": 1}', 422, "body.extra: unknown field"),
        ("not an object", body([1, 2]), 422, "records[0]"),
        ("malformed JSON", b'{"records": [', 400, "malformed JSON"),
        ("deep nesting", b'{"records": ' + b"[" * 100_000, 400, "malformed JSON"),
        (
            "too many",
            body([record] * 10_001),
            413,
            "more than 10000 records in one request; the limit is 10000",
        ),
        (
            "too many empty",
            body([{}] * 100_000),
            413,
            "more than 10000 records in one request; the limit is 10000",
        ),
        (
            "too many values",
            body([{f"f{i}": 1 for i in range(400_000)}]),
            413,
            "more values than 10000 records of 30 features hold; the limit is 10000 records",
        ),
        (
            "many errors, few shown",
            body([{}] * 9_000),
            422,
            "records[0].mean_radius: Field required",
        ),
    ]


def test_bad_input_gets_a_4xx_naming_the_problem(service_url: str, trained: TrainedModel) -> None:
    record = _records(trained, _rows(trained, 1))[0]
    for name, body, status, message in _bad_cases(record):
        response = httpx.post(
            f"{service_url}/predict", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (name, response.text)
        assert message in response.text, (name, response.text)


def test_oversized_body_is_413_before_it_is_read(service_url: str) -> None:
    limit = 64 * 2**20
    host, port = service_url.removeprefix("http://").split(":")
    for path in ("/predict", "/v1/predict/arrow"):
        # Only the headers go out: a 413 that needed the body would never come.
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {limit + 1}\r\n\r\n".encode()
            )
            received = b""
            while chunk := sock.recv(65536):  # the service closes the connection after a 413
                received += chunk
            answer = received.decode()
        assert answer.startswith("HTTP/1.1 413"), answer
        assert "SCOREBOX_SERVICE_MAX_BODY_BYTES" in answer

    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 2**20 + 1):
            yield b"x" * 2**20

    streamed = httpx.post(f"{service_url}/v1/predict/arrow", content=chunks())
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    "content_type", ["application/vnd.bentoml+pickle", "multipart/form-data", "text/plain"]
)
def test_only_json_is_accepted(service_url: str, content_type: str) -> None:
    response = httpx.post(
        f"{service_url}/predict", content=b"\x80\x04K\x01.", headers={"content-type": content_type}
    )
    assert response.status_code == 415


def test_arrow_batch_equals_the_models_own_and_flags_bad_rows(
    service_url: str, trained: TrainedModel
) -> None:
    rows = _rows(trained, 200)
    frame = rows[trained.info.feature_names].astype(float)
    frame.loc[5, "mean_area"] = np.inf
    frame.loc[6, "mean_area"] = np.nan  # missing: imputed, not an error
    response = httpx.post(f"{service_url}/v1/predict/arrow", content=_arrow(frame))
    assert response.status_code == 200, response.text
    assert response.headers["x-scorebox-model"] == trained.tag
    result = pa.ipc.open_stream(response.content).read_all().to_pandas()
    assert len(result) == len(frame)
    assert result.loc[5, "error"] == "infinite value in mean_area"
    assert result["error"].drop(index=5).isna().all()
    good = frame.drop(index=5)
    proba = bentoml.sklearn.load_model(trained.tag).predict_proba(good[trained.info.feature_names])
    np.testing.assert_allclose(result.drop(index=5)[["p:0", "p:1"]].to_numpy(), proba)
    labels = np.where(proba[:, 1] > proba[:, 0], "1", "0")
    assert result.drop(index=5)["predicted_label"].tolist() == labels.tolist()
    # A batch with no refused row is scored on its matrix as it is (no copy): the same answer,
    # the same Arrow types, as the general path gave those rows.
    clean = httpx.post(
        f"{service_url}/v1/predict/arrow", content=_arrow(good.reset_index(drop=True))
    )
    answer = pa.ipc.open_stream(clean.content).read_all()
    general = pa.ipc.open_stream(response.content).read_all()
    assert answer.schema == general.schema
    assert answer.to_pandas().equals(result.drop(index=5).reset_index(drop=True))


def test_arrow_batch_with_wrong_layout_is_422(service_url: str, trained: TrainedModel) -> None:
    frame = pd.DataFrame({"mean_radius": [1.0]})
    response = httpx.post(f"{service_url}/v1/predict/arrow", content=_arrow(frame))
    assert response.status_code == 422
    assert "lacks column(s): mean_texture" in response.text
    garbage = httpx.post(f"{service_url}/v1/predict/arrow", content=b"not arrow")
    assert garbage.status_code == 422


def test_model_health_and_metrics_endpoints(service_url: str, trained: TrainedModel) -> None:
    described = httpx.get(f"{service_url}/v1/model").json()
    assert described["tag"] == trained.tag
    assert described["features"] == [f.to_dict() for f in trained.info.features]
    assert described["fingerprint"] == trained.info.fingerprint
    assert described["metrics"] == pytest.approx(trained.info.metrics)
    assert httpx.get(f"{service_url}/livez").status_code == 200
    assert httpx.get(f"{service_url}/readyz").status_code == 200
    record = _records(trained, _rows(trained, 3))
    # Each worker process counts its own rows; ask a few times so both have served and reported.
    seen = False
    for _ in range(20):
        httpx.post(f"{service_url}/predict", json={"records": record}).raise_for_status()
        seen = (
            'scorebox_rows_predicted_total{endpoint="predict"'
            in httpx.get(f"{service_url}/metrics").text
        )
        if seen:
            break
        time.sleep(0.2)
    assert seen


def test_openapi_shows_the_real_feature_names(service_url: str, trained: TrainedModel) -> None:
    schema = httpx.get(f"{service_url}/docs.json").json()
    record = schema["components"]["schemas"]["Record"]
    assert list(record["properties"]) == trained.info.feature_names
    assert record["additionalProperties"] is False
    assert {"/predict", "/v1/predict/arrow", "/v1/model", "/readyz", "/schema.json"} <= set(
        schema["paths"]
    )


def test_openapi_document_is_valid_and_its_example_is_a_training_record(
    service_url: str, trained: TrainedModel
) -> None:
    from openapi_spec_validator import validate

    document = httpx.get(f"{service_url}/docs.json").json()
    validate(document)  # raises, naming the first problem
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"] == {"records": [trained.info.example]}
    assert document["components"]["schemas"]["Record"]["example"] == trained.info.example
    assert any(value != 0 for value in trained.info.example.values())
    answer = httpx.post(f"{service_url}/predict", json=body["example"])  # Swagger's "Try it out"
    assert answer.status_code == 200, answer.text


def test_bentoml_clients_call_predict_and_get_what_http_gets(
    service_url: str, trained: TrainedModel
) -> None:
    """BentoML's own clients, as BentoML's docs call a service: they find `predict` in
    /schema.json and answer exactly what POST /predict answers."""
    import asyncio

    from bentoml.exceptions import UnprocessableEntity

    records = _records(trained, _rows(trained, 5))
    expected = httpx.post(f"{service_url}/predict", json={"records": records}).json()
    one = httpx.post(f"{service_url}/predict", json={"records": records[0]}).json()
    with bentoml.SyncHTTPClient(service_url) as client:
        assert client.predict(records=records) == expected
        assert client.predict(records[:1]) == one  # positionally, and one record as a list
        assert client.call("predict", records=records[0]) == one  # one record object
        with pytest.raises(UnprocessableEntity, match=r"records\[0\]\.mean_area: Field required"):
            client.predict(records=[{k: v for k, v in records[0].items() if k != "mean_area"}])

    async def called() -> tuple[object, object]:
        async with bentoml.AsyncHTTPClient(service_url) as client:
            return await client.predict(records=records), await client.predict(records=records)

    assert asyncio.run(called()) == (expected, expected)
    schema = httpx.get(f"{service_url}/schema.json").json()
    assert schema["name"] == "scorebox" and [r["name"] for r in schema["routes"]] == ["predict"]
    assert {"/predict", "/v1/predict/arrow", "/v1/model"} <= set(schema["paths"])


def schemathesis(service_url: str, examples: int, seed: int) -> None:
    """Run schemathesis against the service's OpenAPI document; fail on any 5xx."""
    done = subprocess.run(
        [
            *(str(BIN / "st"), "run", f"{service_url}/docs.json", "--checks", "not_a_server_error"),
            # Arrow bodies are binary: tests/stories/test_hardening.py fuzzes that endpoint itself.
            *("--exclude-path", "/v1/predict/arrow"),
            *("--max-examples", str(examples), "--seed", str(seed)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(service_url: str) -> None:
    schemathesis(service_url, examples=40, seed=7)


@pytest.fixture(scope="module")
def auth_url(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = process_env(trained.settings, SCOREBOX_API_TOKEN="t0ken-for-tests")
    with serving(env, tmp_path_factory.mktemp("auth") / "serve.log") as url:
        yield url


def test_token_is_required_everywhere_but_health(auth_url: str, trained: TrainedModel) -> None:
    record = _records(trained, _rows(trained, 1))
    calls = [
        ("POST", "/predict", {"json": {"records": record}}),
        ("POST", "/v1/predict/arrow", {"content": b""}),
        ("GET", "/v1/model", {}),
        ("GET", "/docs.json", {}),
        ("GET", "/schema.json", {}),
        ("GET", "/metrics", {}),
        ("GET", "/", {}),
    ]
    for method, path, kwargs in calls:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "t0ken-for-tests"},
        ):
            response = httpx.request(method, auth_url + path, headers=headers, **kwargs)  # type: ignore[arg-type]
            assert response.status_code == 401, (path, headers)
    good = {"Authorization": "Bearer t0ken-for-tests"}
    predicted = httpx.post(f"{auth_url}/predict", json={"records": record}, headers=good)
    assert predicted.status_code == 200
    with bentoml.SyncHTTPClient(auth_url, token="t0ken-for-tests") as client:
        assert client.predict(records=record) == predicted.json()
    assert httpx.get(f"{auth_url}/v1/model", headers=good).status_code == 200
    assert httpx.get(f"{auth_url}/livez").status_code == 200
    assert httpx.get(f"{auth_url}/readyz").status_code == 200


def test_tampered_artifact_is_refused(trained: TrainedModel, tmp_path: Path) -> None:
    stored = bentoml.models.get(trained.tag)
    copy = Path(shutil.copytree(stored.path, tmp_path / "model"))
    manifest = Catalog.from_settings(trained.settings, None).local(trained.tag).manifest
    version = Version(trained.tag, copy, manifest)
    for name in (ONNX_ARTIFACT, ARTIFACT):
        version.read(name)
        data = (copy / name).read_bytes()
        (copy / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit
        with pytest.raises(ModelError, match="refusing to load it"):
            version.read(name)


def test_service_with_a_tampered_artifact_stops_at_start(
    trained: TrainedModel, tmp_path: Path
) -> None:
    stored = bentoml.models.get(trained.tag)
    home, versions = tmp_path / "bentoml", Path(stored.path).parent
    shutil.copytree(versions, home / "models" / versions.name)
    target = home / "models" / versions.name / Path(stored.path).name
    with (target / ONNX_ARTIFACT).open("ab") as artifact:
        artifact.write(b"\x00")
    env = process_env(trained.settings, BENTOML_HOME=str(home))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="refusing to load it"), serving(env, tmp_path / "log"):
        pass
    assert time.monotonic() - started < 60
    _one_line_at_start(tmp_path / "log", "refusing to load it")


def test_service_refuses_to_start_without_the_model(trained: TrainedModel, tmp_path: Path) -> None:
    env = process_env(trained.settings, SCOREBOX_MODEL_NAME="no-such-model")
    expected = "no model no-such-model:latest in the registry or the BentoML store"
    with pytest.raises(RuntimeError, match=expected), serving(env, tmp_path / "serve.log"):
        pass
    _one_line_at_start(tmp_path / "serve.log", expected)


def test_service_with_an_alias_nobody_set_says_so_in_one_line(
    trained: TrainedModel, tmp_path: Path
) -> None:
    env = process_env(trained.settings, SCOREBOX_MODEL_TAG="nosuchalias")
    done = subprocess.run(
        [str(BIN / "bentoml"), "serve", ".", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("scorebox service: no model "), done.stderr
    assert "nosuchalias" in lines[-1]


def _schema_of(settings: Settings) -> str:
    """The schema a test's database URL puts first on the search path."""
    return str(make_url(settings.database_url).query["options"]).removeprefix("-csearch_path=")


def _register_trained(trained: TrainedModel, engine: Engine) -> None:
    """The served model's signed version, registered in this test's schema as well."""
    upgrade(engine, "predictions")
    with engine.begin() as conn:
        conn.execute(
            text(
                f'INSERT INTO scorebox_models SELECT * FROM "{_schema_of(trained.settings)}"'
                ".scorebox_models WHERE tag = :tag"
            ),
            {"tag": trained.tag},
        )


@pytest.mark.slow
def test_service_serving_an_alias_of_another_models_version_stops_in_one_line(
    trained: TrainedModel, settings: Settings, engine: Engine
) -> None:
    """An alias of model `other` pointing at a version of `served` (the registry lets a direct
    UPDATE do that): one line and exit 1, not workers failing to start again and again."""
    _register_trained(trained, engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scorebox_aliases (name, alias, tag, moved_by) "
                "VALUES ('other', 'champion', :tag, 'test')"
            ),
            {"tag": trained.tag},
        )
    env = process_env(settings, SCOREBOX_MODEL_NAME="other", SCOREBOX_MODEL_TAG="champion")
    process = subprocess.Popen(
        [str(BIN / "bentoml"), "serve", ".", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=90)
    finally:
        stop(process)  # crash-looping workers are still running if it did not exit
    assert process.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"scorebox service: other:champion names {trained.tag}, which is not a version of "
        "other, the model this service serves"
    ), stderr[-3000:]


@pytest.mark.slow
def test_a_refused_pinned_version_is_a_409_without_the_servers_paths(
    trained: TrainedModel, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """A version a request pins whose file is missing from this machine's store: the 409 says
    so without naming where the store is (the log does)."""
    from training import train

    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target")
    mine = settings.model_copy(update={"model_name": trained.settings.model_name})
    newer = train(mine, engine).tag  # what this schema's registry serves as latest
    stored = bentoml.models.get(trained.tag)
    home, versions = tmp_path / "bentoml", Path(stored.path).parent
    shutil.copytree(versions, home / "models" / versions.name)
    (home / "models" / versions.name / Path(stored.path).name / ONNX_ARTIFACT).unlink()
    env = process_env(
        mine,
        BENTOML_HOME=str(home),
        SCOREBOX_SERVICE_PINNABLE=trained.tag,
        SCOREBOX_SERVICE_WORKERS="1",
    )
    record = _records(trained, _rows(trained, 1))
    with serving(env, tmp_path / "serve.log") as url:
        served = httpx.post(f"{url}/predict", json={"records": record})
        assert served.json()["model"] == newer
        for _ in range(2):  # loading it, then the refusal remembered
            refused = httpx.post(
                f"{url}/predict",
                json={"records": record},
                headers={"x-scorebox-model": trained.tag},
            )
            assert refused.status_code == 409, refused.text
            message = refused.json()["error"]
            assert f"{ONNX_ARTIFACT} is missing from <path>" in message, message
            assert str(tmp_path) not in message and not re.search(r"(^|[\s'\"])/\w", message)
    assert str(home) in (tmp_path / "serve.log").read_text()  # the operator's log has it


def _one_line_at_start(log: Path, expected: str) -> None:
    """`bentoml serve` stopped with one line naming the problem, not BentoML's traceback."""
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "scorebox service: " in text and expected in text


@pytest.mark.slow
def test_bento_builds_with_the_model_and_a_clean_dockerfile(trained: TrainedModel) -> None:
    done = subprocess.run(
        [str(BIN / "bentoml"), "build", "-o", "tag"],
        cwd=ROOT,
        env=process_env(trained.settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.get(tag)
    described = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())
    assert [m["tag"] for m in described["services"][0]["models"]] == [trained.tag]
    dockerfile = Path(bento.path) / "env" / "docker" / "Dockerfile"
    assert "ORT_DISABLE_TELEMETRY" in dockerfile.read_text()  # as in the Dockerfile
    lint = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "error", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert f"scikit-learn=={trained.info.versions['scikit-learn']}" in requirements
