"""Only what training produced can run: attacks on the registry with the README's own grants, with
real PostgreSQL, `bentoml serve` and the CLI.

An attacker who may only INSERT into scorebox_models, UPDATE an alias, or send any header to the
service crafts versions whose pickle writes a marker file when unpickled; none of them ever runs
(the marker never appears), each is refused with its reason, and the service keeps serving. A
dozen crafted archives are refused within bounded memory and time; keys rotate without a
restart; the database, not the inserter, records who and when.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, text

from scorebox.db import make_engine
from scorebox.migrate import upgrade
from scorebox.seed import seed
from scorebox.settings import Settings, load_settings
from scorebox.signing import create_key, public_path, sign
from scorebox_cli.processes import BIN, free_port, serving, stop
from tests.conftest import PG_HOST, new_schema, process_env
from tests.test_archive import xz_bomb

NAME = "trust"


@dataclass(frozen=True)
class Registry:
    """A schema with the example table and one version signed by key A, the only trusted key;
    key B exists but nobody trusts it yet; a role that may only read and insert versions."""

    settings: Settings
    engine: Engine
    v1: str
    archive: bytes  # v1's .bentomodel archive, as anyone who can read the registry gets it
    envelope: str  # v1's signature
    trusted: Path  # the folder of trusted public keys
    key_a: Path
    key_b: Path
    inserter: str  # a database role with SELECT, INSERT on scorebox_models only
    database: str
    schema: str


def _env(registry: Registry, **extra: str) -> dict[str, str]:
    keys = {
        "SCOREBOX_TRUSTED_KEYS": str(registry.trusted),
        "SCOREBOX_SIGNING_KEY": str(registry.key_a),
    }
    return process_env(registry.settings, **(keys | extra))


def _cli(registry: Registry, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "scorebox"), *args],
        env=_env(registry, **extra),
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def registry(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    from training import train

    keys = tmp_path_factory.mktemp("keys")
    trusted = keys / "trusted"
    trusted.mkdir()
    key_a, key_b = keys / "a.pem", keys / "b.pem"
    create_key(key_a)
    create_key(key_b)
    (trusted / "a.pub").write_text(public_path(key_a).read_text())
    schema, url = new_schema(database, "trust")
    inserter = f"scorebox_inserter_{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        database_url=url,
        model_name=NAME,
        signing_key=key_a,
        trusted_keys=str(trusted),
    )
    engine = make_engine(settings.database_url)
    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target")
    v1 = train(settings, engine).tag
    with engine.connect() as conn:
        archive, envelope = conn.execute(
            text("SELECT artifact, signature FROM scorebox_models WHERE tag = :t"), {"t": v1}
        ).one()
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={database}", autocommit=True) as c:
        c.execute(f'CREATE ROLE "{inserter}" LOGIN')
        c.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{inserter}"')
        c.execute(f'GRANT SELECT, INSERT ON "{schema}".scorebox_models TO "{inserter}"')
    yield Registry(
        settings,
        engine,
        v1,
        bytes(archive),
        envelope,
        trusted,
        key_a,
        key_b,
        inserter,
        database,
        schema,
    )
    engine.dispose()
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={database}", autocommit=True) as c:
        c.execute(f'DROP OWNED BY "{inserter}"')
        c.execute(f'DROP ROLE "{inserter}"')


# --- what an attacker builds ----------------------------------------------------------------


class _Payload:
    """Unpickling this writes ``marker``: what a hostile pickle in a model archive does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (eval, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:xz") as tar:
        return {
            m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _xz_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buffer.getvalue()


def _hostile_archive(
    registry: Registry, marker: Path, version: str
) -> tuple[bytes, dict[str, Any]]:
    """v1's archive with the pickle swapped for one that writes ``marker``, the compiled model
    removed (so only the pickle could serve it), the hashes in model.yaml fixed: what a role
    that can read the registry and insert into it builds."""
    import yaml

    files = _members(registry.archive)
    files.pop("model.onnx")
    files.pop("scorebox-signature.json", None)
    files["saved_model.pkl"] = pickle.dumps(_Payload(marker))
    described = yaml.safe_load(files["model.yaml"])
    described["version"] = version
    metadata = described["metadata"]
    metadata["compiled_sha256"], metadata["scoring"] = "", {}
    metadata["artifact_sha256"] = _sha(files["saved_model.pkl"])
    files["model.yaml"] = yaml.safe_dump(described).encode()
    return _xz_tar(list(files.items())), metadata


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _insert_as(registry: Registry, role: str, tag: str, archive: bytes, **columns: Any) -> None:
    """INSERT a version as ``role``, trying to choose its audit fields too."""
    values = {
        "tag": tag,
        "name": NAME,
        "task": "classification",
        "estimator": "hist_gradient_boosting",
        "metrics": json.dumps({"roc_auc": 0.99}),
        "metadata": json.dumps(columns.pop("metadata", {})),
        "artifact": archive,
        "artifact_sha256": _sha(archive),
        "signature": None,
        "created_by": "training@ci",
        "created_at": "2099-01-01T00:00:00Z",
    } | columns
    names = ", ".join(values)
    marks = ", ".join(f"%({k})s" for k in values)
    with psycopg.connect(
        f"host={PG_HOST} user={role} dbname={registry.database} "
        f"options=-csearch_path={registry.schema}",
        autocommit=True,
    ) as conn:
        conn.execute(f"INSERT INTO scorebox_models ({names}) VALUES ({marks})", values)  # type: ignore[arg-type]


def _hostile_versions(registry: Registry, marker: Path) -> dict[str, str]:
    """Three hostile versions inserted by the insert-only role: unsigned, with v1's signature
    replayed, and signed by a key of the attacker's own; {tag: the reason it must be refused}."""
    outsider = create_key(marker.parent / f"outsider-{uuid.uuid4().hex[:6]}.pem")
    refused = {}
    for kind, reason in [
        ("unsigned", "is not signed"),
        ("replayed", f"its signature is for {registry.v1}"),
        ("own-key", "which is not trusted"),
    ]:
        tag = f"{NAME}:evil-{kind}-{uuid.uuid4().hex[:6]}"
        archive, metadata = _hostile_archive(registry, marker, tag.partition(":")[2])
        envelope = {
            "unsigned": None,
            "replayed": registry.envelope,
            "own-key": sign(outsider, tag, {}, metadata),
        }[kind]
        _insert_as(registry, registry.inserter, tag, archive, signature=envelope, metadata=metadata)
        refused[tag] = reason
    return refused


# --- the attacks ----------------------------------------------------------------------------


def test_an_insert_only_role_cannot_make_any_service_run_its_pickle(
    registry: Registry, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    env = _env(
        registry,
        BENTOML_HOME=str(home),
        SCOREBOX_MODEL_POLL_SECONDS="0.3",
        SCOREBOX_SERVICE_WORKERS="1",
    )
    with serving(env, tmp_path / "serve.log") as url:
        assert httpx.get(f"{url}/v1/model").json()["tag"] == registry.v1
        hostile = _hostile_versions(registry, marker)
        time.sleep(3)  # ten polls of `latest`
        described = httpx.get(f"{url}/v1/model").json()
        assert (described["tag"], described["switch_error"]) == (registry.v1, None)
        record = {f["name"]: 1.0 for f in described["features"]}

        # Pinning a version by header reaches only what a running job pinned.
        for tag in hostile:
            answer = httpx.post(
                f"{url}/predict", json={"records": [record]}, headers={"x-scorebox-model": tag}
            )
            assert answer.status_code == 409, answer.text
            assert "no queued or running job pinned" in answer.json()["error"]
        # Even a job row naming them (a role that can write jobs) loads nothing unsigned.
        with registry.engine.begin() as conn:
            for tag in hostile:
                conn.execute(
                    text(
                        "INSERT INTO scorebox_jobs (table_name, model_tag, mode, status, "
                        "rows_total, id_column, features, chunk_size, chunks_total, queue) VALUES "
                        "('features', :t, 'all', 'queued', 0, 'id', '[]', 1, 0, 'q')"
                    ),
                    {"t": tag},
                )
        for tag, reason in hostile.items():
            answer = httpx.post(
                f"{url}/predict", json={"records": [record]}, headers={"x-scorebox-model": tag}
            )
            assert answer.status_code == 409, answer.text
            assert reason in answer.json()["error"]
        metrics = httpx.get(f"{url}/metrics").text
        for reason in ("not_pinned", "unsigned", "wrong_version", "unknown_key"):
            assert f'scorebox_model_refusals_total{{reason="{reason}"}}' in metrics, reason
        assert httpx.post(f"{url}/predict", json={"records": [record]}).json()["model"] == (
            registry.v1
        )
    assert not marker.exists(), "a hostile pickle ran"
    assert not any(p.name.startswith("evil-") for p in (home / "models" / NAME).iterdir())

    # The database wrote who and when, whatever the inserter said.
    with registry.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT created_by, created_at < now() + interval '1 minute' FROM scorebox_models "
                "WHERE tag LIKE 'trust:evil-%'"
            )
        ).all()
    assert rows and all(tuple(r) == (registry.inserter, True) for r in rows)
    listed = _cli(registry, "models", "list")
    assert listed.returncode == 0, listed.stderr
    for tag, reason in hostile.items():
        line = next(row for row in listed.stdout.splitlines() if row.startswith(tag))
        assert "REFUSED" in line and reason in line
    verify = _cli(registry, "models", "verify", next(iter(hostile)))
    assert verify.returncode == 1 and "is not signed" in verify.stderr
    assert "Traceback" not in verify.stderr
    assert not marker.exists()


def test_a_moved_alias_cannot_switch_a_service_to_an_unsigned_version_and_keys_rotate_live(
    registry: Registry, tmp_path: Path
) -> None:
    from training import train

    marker = tmp_path / "marker"
    hostile = _hostile_versions(registry, marker)
    assert _cli(registry, "models", "alias", "champion", registry.v1).returncode == 0
    env = _env(
        registry,
        SCOREBOX_MODEL_TAG="champion",
        SCOREBOX_MODEL_POLL_SECONDS="0.3",
        SCOREBOX_SERVICE_WORKERS="1",
    )

    def wait_for(check: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            described = httpx.get(f"{url}/v1/model").json()
            if check(described):
                return described  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, (what, described)
            time.sleep(0.2)

    with serving(env, tmp_path / "serve.log") as url:
        for tag, reason in hostile.items():
            # A role with UPDATE on the aliases, straight in SQL: no CLI, no history of its own.
            with registry.engine.begin() as conn:
                conn.execute(
                    text("UPDATE scorebox_aliases SET tag = :t WHERE alias = 'champion'"),
                    {"t": tag},
                )
            described = wait_for(
                lambda d, tag=tag: f"refused {tag}" in (d["switch_error"] or ""), tag
            )
            assert described["tag"] == registry.v1 and reason in described["switch_error"]
        assert not marker.exists(), "a hostile pickle ran"
        history = _cli(registry, "models", "history", "champion").stdout
        assert sum(" direct by postgres" in line for line in history.splitlines()) == len(hostile)

        # A version signed by key B, which nobody trusts yet: refused by the CLI and the service.
        settings_b = registry.settings.model_copy(update={"signing_key": registry.key_b})
        v2 = train(settings_b, registry.engine).tag
        refused = _cli(registry, "models", "alias", "champion", v2)
        assert refused.returncode == 1 and "which is not trusted" in refused.stderr
        with registry.engine.begin() as conn:
            conn.execute(
                text("UPDATE scorebox_aliases SET tag = :t WHERE alias = 'champion'"), {"t": v2}
            )
        described = wait_for(lambda d: f"refused {v2}" in (d["switch_error"] or ""), "key B")
        assert described["tag"] == registry.v1
        # Rotation: trust key B beside A; the running service switches, no restart.
        (registry.trusted / "b.pub").write_text(public_path(registry.key_b).read_text())
        try:
            wait_for(lambda d: d["tag"] == v2 and d["switch_error"] is None, "after rotation")
            assert _cli(registry, "models", "verify", "champion").returncode == 0
        finally:
            (registry.trusted / "b.pub").unlink()
            assert _cli(registry, "models", "alias", "champion", registry.v1).returncode == 0
    assert not marker.exists()


def test_audit_fields_are_the_databases_and_a_malformed_row_is_shown_as_unreadable(
    registry: Registry, tmp_path: Path
) -> None:
    from scorebox.catalog import Catalog

    catalog = Catalog.from_settings(registry.settings, registry.engine)
    before = catalog.resolve(NAME, "latest").tag
    bad = f"{NAME}:malformed-{uuid.uuid4().hex[:6]}"
    _insert_as(
        registry,
        "postgres",
        bad,
        b"not an archive",
        metrics=json.dumps({"roc_auc": None}),
        metadata={"features": "nope"},
        signature='{"scheme": 1}',
    )
    with registry.engine.connect() as conn:
        created_at, by = conn.execute(
            text(
                "SELECT created_at < now() + interval '1 minute', created_by FROM "
                "scorebox_models WHERE tag = :t"
            ),
            {"t": bad},
        ).one()
    assert (created_at, by) == (True, "postgres")
    assert catalog.resolve(NAME, "latest").tag == before  # newest, but not signed
    listed = _cli(registry, "models", "list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert "REFUSED" in next(row for row in listed.stdout.splitlines() if row.startswith(bad))
    shown = _cli(registry, "models", "show", bad)
    assert shown.returncode == 1 and "signature is malformed" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1

    # The dashboard shows it refused, and what it shows of the others comes from signatures.
    port = free_port()
    log = tmp_path / "dashboard.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "scorebox"), "dashboard", "--port", str(port)],
            env=_env(registry),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert page.status_code == 200, page.text
        assert f"{bad}" in page.text and "Refused, never loaded" in page.text
        assert "signature is malformed" in page.text
        plot = httpx.get(f"{url}/models/{registry.v1}/evaluation.png", timeout=30)
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
        refused = httpx.get(f"{url}/models/{bad}/evaluation.png", timeout=30)
        assert refused.status_code == 409 and "malformed" in refused.text
    finally:
        stop(process)
    assert "Traceback" not in log.read_text()


# --- crafted archives, refused within bounded memory and time ------------------------------

_CHILD = """
import json, os, sys, threading, time
from scorebox.settings import load_settings
from scorebox.db import make_engine
from scorebox.catalog import Catalog
from scorebox.archive import Limits
from scorebox.errors import TrustError

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

settings = load_settings()
catalog = Catalog.from_settings(settings, make_engine(settings.database_url))
catalog.limits = Limits(4 * 2**20, 8 * 2**20, 16 * 2**20)
catalog.resolve("trust", "latest")  # connected and warm before the baseline
baseline, peak, done = resident(), [0], threading.Event()

def sample():
    while not done.wait(0.002):
        peak[0] = max(peak[0], resident())

sampler = threading.Thread(target=sample)
sampler.start()
results = {}
for tag in sys.argv[1:]:
    began = time.monotonic()
    try:
        catalog.local(tag)
        results[tag] = ["accepted", None, 0]
    except TrustError as exc:
        results[tag] = [exc.reason, str(exc), time.monotonic() - began]
done.set()
sampler.join()
print(json.dumps({"results": results, "grown_kib": max(0, peak[0] - baseline) // 1024}))
"""


def _signed_case(registry: Registry, tag: str, archive: bytes, files: dict[str, bytes]) -> None:
    """A row whose manifest (of ``files``) is validly signed by the trusted key A, with
    ``archive`` as its archive: a valid signature over other bytes."""
    from scorebox.signing import FileEntry, load_key

    manifest = {name: FileEntry(_sha(data), len(data)) for name, data in files.items()}
    metadata = json.loads(json.loads(registry.envelope)["manifest"])["metadata"]
    envelope = sign(load_key(registry.key_a), tag, manifest, metadata)
    _insert_as(registry, "postgres", tag, archive, signature=envelope, metadata=metadata)


@pytest.mark.slow
def test_crafted_archives_are_refused_in_bounded_memory_and_time(
    registry: Registry, tmp_path: Path
) -> None:
    files = {n: d for n, d in _members(registry.archive).items() if n != "scorebox-signature.json"}
    real = list(files.items())
    small = {"model.yaml": files["model.yaml"]}
    cases: dict[str, tuple[str, str]] = {}  # tag -> (reason, words in the message)

    def case(kind: str, reason: str, words: str) -> str:
        tag = f"{NAME}:case-{kind}-{uuid.uuid4().hex[:4]}"
        cases[tag] = (reason, words)
        return tag

    def entry(name: str, kind: bytes, link: str = "", size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, size
        return info

    bomb = xz_bomb("saved_model.pkl", 1536 * 2**20)  # 1.5 GiB of zeros in ~0.2 MB
    _insert_as(registry, "postgres", case("unsigned-bomb", "unsigned", "not signed"), bomb)
    _signed_case(registry, case("bomb-as-listed", "tampered", "bytes in the archive"), bomb, files)
    _signed_case(
        registry,
        case("bomb-unlisted", "tampered", "does not list"),
        xz_bomb("extra.bin", 1536 * 2**20),
        small,
    )
    pax = io.BytesIO()
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 100 * 2**20
    pax.write(header.tobuf(format=tarfile.USTAR_FORMAT) + bytes(100 * 2**20))
    _signed_case(
        registry,
        case("pax-header-bomb", "too_large", "more than its manifest lists"),
        lzma.compress(pax.getvalue(), preset=0),
        small,
    )
    for kind, extra, words in [
        ("traversal", ("../../escape", b"x"), "unsafe path"),
        ("absolute", ("/tmp/escape", b"x"), "unsafe path"),
        ("symlink", entry("link", tarfile.SYMTYPE, "/etc/passwd"), "not a regular file"),
        ("hardlink", entry("hard", tarfile.LNKTYPE, "model.yaml"), "not a regular file"),
        ("fifo", entry("pipe", tarfile.FIFOTYPE), "not a regular file"),
        ("device", entry("dev", tarfile.CHRTYPE), "not a regular file"),
        ("duplicate", ("model.yaml", files["model.yaml"]), "twice"),
    ]:
        _signed_case(
            registry,
            case(kind, "unsafe", words),
            _xz_tar([*real, extra]),  # type: ignore[list-item]
            files,
        )
    _signed_case(
        registry,
        case("unlisted", "tampered", "does not list"),
        _xz_tar([*real, ("extra.py", b"import os")]),
        files,
    )
    _signed_case(
        registry,
        case("missing", "tampered", "lacks"),
        _xz_tar([r for r in real if r[0] != "model.onnx"]),
        files,
    )
    swapped = [(n, d if n != "model.onnx" else bytes(len(d))) for n, d in real]
    _signed_case(registry, case("other-bytes", "tampered", "not the file"), _xz_tar(swapped), files)
    _signed_case(
        registry, case("not-xz", "unsafe", "not valid xz"), b"\x1f\x8b" + bytes(500), files
    )
    flipped = json.loads(registry.envelope)
    signature = flipped["signature"]
    flipped["signature"] = signature[:10] + ("B" if signature[10] == "A" else "A") + signature[11:]
    _insert_as(
        registry,
        "postgres",
        case("flipped-signature", "bad_signature", "does not match"),
        registry.archive,
        signature=json.dumps(flipped),
    )
    _insert_as(
        registry,
        "postgres",
        case("replayed", "wrong_version", f"signature is for {registry.v1}"),
        registry.archive,
        signature=registry.envelope,
    )
    big = os.urandom(5 * 2**20)
    _signed_case(
        registry, case("archive-too-large", "too_large", "SCOREBOX_MODEL_MAX_ARCHIVE"), big, files
    )
    _signed_case(
        registry,
        case("file-too-large", "too_large", "SCOREBOX_MODEL_MAX_FILE_BYTES"),
        _xz_tar(real),
        {**files, "model.onnx": bytes(9 * 2**20)},
    )
    _insert_as(
        registry,
        "postgres",
        case("signature-too-large", "malformed", "too large"),
        registry.archive,
        signature="x" * (9 * 2**20),
    )
    assert len(cases) >= 12

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *cases],
        env=_env(registry, BENTOML_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for tag, (reason, words) in cases.items():
        got, message, seconds = report["results"][tag]
        assert got == reason and words in message, (tag, got, message)
        assert seconds < 5, (tag, seconds)
    assert report["grown_kib"] < 64 * 1024, report["grown_kib"]
    slowest = max(seconds for _, _, seconds in report["results"].values())
    print(
        f"\ncrafted archives: {len(cases)} refused, slowest {slowest:.2f} s, peak RSS "
        f"+{report['grown_kib'] / 1024:.1f} MiB"
    )
    assert not any(p.name.startswith("case-") for p in (home / "models").glob("*/*"))
    assert not list(home.glob(".scorebox-import-*"))


def test_keys_are_created_listed_and_never_overwritten(registry: Registry, tmp_path: Path) -> None:
    key = tmp_path / "new" / "key.pem"
    created = _cli(registry, "keys", "create", "--out", str(key))
    assert created.returncode == 0, created.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert public_path(key).read_text().startswith("scorebox-ed25519 ")
    again = _cli(registry, "keys", "create", "--out", str(key))
    assert again.returncode == 1 and "never overwritten" in again.stderr
    listed = _cli(registry, "keys", "list", SCOREBOX_SIGNING_KEY=str(key))
    assert listed.returncode == 0, listed.stderr
    assert str(registry.trusted) in listed.stdout and "NOT trusted here" in listed.stdout
    trusting = _cli(
        registry,
        "keys",
        "list",
        SCOREBOX_SIGNING_KEY=str(key),
        SCOREBOX_TRUSTED_KEYS=f"{registry.trusted},{public_path(key)}",
    )
    assert "trusted here" in trusting.stdout and "NOT" not in trusting.stdout
    missing = _cli(registry, "train", SCOREBOX_SIGNING_KEY=str(tmp_path / "nope.pem"))
    assert missing.returncode == 1 and "SCOREBOX_SIGNING_KEY: no key at" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_model_that_cannot_be_exported_is_served_from_its_signed_pickle(
    registry: Registry, tmp_path: Path
) -> None:
    import numpy as np

    from scorebox.catalog import Catalog, Version
    from scorebox.signing import TrustedKeys, folder_files, load_key, verify
    from service.predict import Predictor

    catalog = Catalog.from_settings(registry.settings, registry.engine)
    exported = Predictor.load(catalog.local(registry.v1))
    assert exported.compiled
    folder = tmp_path / "copy"
    shutil.copytree(catalog.local(registry.v1).path, folder)
    (folder / "model.onnx").unlink()
    metadata = dict(catalog.local(registry.v1).manifest.metadata)
    metadata["scoring"], metadata["compiled_sha256"] = {}, ""
    envelope = sign(load_key(registry.key_a), registry.v1, folder_files(folder), metadata)
    manifest = verify(envelope, registry.v1, TrustedKeys(str(registry.trusted)))
    pickled = Predictor.load(Version(registry.v1, folder, manifest))
    assert not pickled.compiled
    rows = np.random.default_rng(0).normal(size=(50, len(exported.features))) * 10 + 20
    np.testing.assert_allclose(pickled.run(rows)[1], exported.run(rows)[1], rtol=1e-9, atol=0)


_STORE_CHILD = """
import json, sys
from pathlib import Path
from scorebox.settings import load_settings
from scorebox.db import make_engine
from scorebox.catalog import Catalog, _folder
from scorebox.errors import TrustError
from service.models import load_predictor

settings = load_settings()
catalog = Catalog.from_settings(settings, make_engine(settings.database_url))
old, new = sys.argv[1:]
seen = {}
load_predictor(catalog, old, "trust")
seen["old_imported"] = _folder(old) is not None
load_predictor(catalog, new, "trust")
seen["old_evicted"] = _folder(old) is None
folder = _folder(new)
data = (folder / "model.onnx").read_bytes()
(folder / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
try:
    load_predictor(catalog, new, "trust")
    seen["damaged"] = "loaded"
except TrustError as exc:
    seen["damaged"] = exc.reason
seen["damaged_removed"] = _folder(new) is None
seen["reimported"] = load_predictor(catalog, new, "trust").tag == new
print(json.dumps(seen))
"""


def test_the_store_keeps_few_imports_and_imports_a_damaged_one_again(
    registry: Registry, tmp_path: Path
) -> None:
    from training import train

    newer = train(registry.settings, registry.engine).tag
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", _STORE_CHILD, registry.v1, newer],
        env=_env(registry, BENTOML_HOME=str(home), SCOREBOX_MODEL_STORE_KEEP="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "old_imported": True,
        "old_evicted": True,
        "damaged": "tampered",
        "damaged_removed": True,
        "reimported": True,
    }
