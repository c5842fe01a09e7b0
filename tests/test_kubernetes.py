"""The Kubernetes manifests (deploy/kubernetes), checked offline: every overlay renders, every
object is valid for Kubernetes (strict schemas; KEDA's CRDs vendored in tests/schemas), the pods
pass the policy rules below (after kube-score's and kube-linter's checks) and checkov's scan, and
what the manifests say agrees with the code: settings, probes, commands, grace periods, the
queue KEDA counts. The worker's probes are run against a real worker (slow)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text

from scorebox.migrate import upgrade
from scorebox.settings import ENV_PREFIX, Settings, load_settings
from scorebox_cli.processes import BIN, ROOT, child_env, stop
from tests.conftest import PG_HOST
from tests.kube import (
    KUBERNETES,
    OVERLAYS,
    WORKLOADS,
    Cluster,
    Container,
    DockerRun,
    Manifest,
    find,
    pod_template,
    render,
)
from worker import health

# Kubernetes versions the objects must be valid for: the oldest the manifests use features of
# (the preStop sleep action is on by default from 1.30) and the newest kubernetes-validate knows.
VERSIONS = ("1.30.0", "1.37.0")
SCHEMAS = Path(__file__).parent / "schemas"
# What the user puts in the Secret scorebox-secrets (and the signing key's), for the tests.
SECRETS = {
    "scorebox-secrets": {
        "migrate-database-url": "postgresql+psycopg://owner:pw@db:5432/scorebox",
        "training-database-url": "postgresql+psycopg://training:pw@db:5432/scorebox",
        "service-database-url": "postgresql+psycopg://service:pw@db:5432/scorebox",
        "worker-database-url": "postgresql+psycopg://worker:pw@db:5432/scorebox",
        "dashboard-database-url": "postgresql+psycopg://reader:pw@db:5432/scorebox",
        "redis-url": "redis://:pw@redis:6379/0",
        "api-token": "a-token",
        "keda-connection": "postgresql://keda:pw@db:5432/scorebox",
    },
    "scorebox-signing-key": {"ed25519.pem": "-----BEGIN PRIVATE KEY-----\n...\n"},
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Every overlay (and the base) as `kubectl kustomize` renders it."""
    folders = [KUBERNETES / "base", *OVERLAYS]
    return {folder.name: render(folder) for folder in folders}


def _overlays(rendered: dict[str, list[Manifest]]) -> Iterator[tuple[str, list[Manifest]]]:
    return ((name, docs) for name, docs in rendered.items() if name != "base")


def _workloads(docs: list[Manifest]) -> list[Manifest]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def _names(docs: list[Manifest], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["kind"] == kind}


def test_every_overlay_renders_every_process(rendered: dict[str, list[Manifest]]) -> None:
    assert {name for name, _ in _overlays(rendered)} == {"hpa", "keda"}
    for name, docs in _overlays(rendered):
        assert _names(docs, "Deployment") == {
            "scorebox-service",
            "scorebox-worker",
            "scorebox-dashboard",
        }, name
        assert _names(docs, "Job") == {"scorebox-migrate", "scorebox-training"}, name
        assert "scorebox-schedule" in _names(docs, "CronJob"), name
        assert not _names(docs, "Secret"), f"{name}: secrets are the user's, never rendered"
    assert "scorebox-training" in _names(rendered["keda"], "CronJob")


def _strict(schema: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation: an object with
    properties takes no others (unless it says it keeps unknown fields)."""
    if isinstance(schema, dict):
        strict = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator(kind: str) -> Any:
    import jsonschema

    (path,) = SCHEMAS.glob(f"keda-{kind.lower()}-v*.yaml")
    schema = _strict(yaml.safe_load(path.read_text()))
    # metadata is the API server's to check (kubernetes-validate does, for built-in kinds).
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def test_every_object_is_valid_for_kubernetes_in_strict_mode(
    rendered: dict[str, list[Manifest]],
) -> None:
    import kubernetes_validate

    crds = {kind: _crd_validator(kind) for kind in ("ScaledObject", "TriggerAuthentication")}
    for name, docs in rendered.items():
        for doc in docs:
            what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            if doc["apiVersion"].startswith("keda.sh/"):
                assert doc["apiVersion"] == "keda.sh/v1alpha1", what
                errors = [e.message for e in crds[doc["kind"]].iter_errors(doc)]
                assert not errors, (what, errors)
                continue
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    pytest.fail(f"{what} invalid for Kubernetes {version}: {path}: {exc.message}")


def test_the_vendored_keda_schema_refuses_what_keda_would(
    rendered: dict[str, list[Manifest]],
) -> None:
    validator = _crd_validator("ScaledObject")
    scaled = find(rendered["keda"], "ScaledObject", "scorebox-worker")
    assert not list(validator.iter_errors(scaled))
    wrong = json.loads(json.dumps(scaled))
    wrong["spec"]["maxReplicas"] = 8  # the HPA's spelling, not KEDA's
    assert list(validator.iter_errors(wrong))
    del wrong["spec"]["maxReplicas"], wrong["spec"]["triggers"]
    assert list(validator.iter_errors(wrong))


def _containers(template: Manifest) -> list[Manifest]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_pod_is_non_root_read_only_unprivileged_and_tokenless(
    rendered: dict[str, list[Manifest]],
) -> None:
    for name, docs in rendered.items():
        for workload in _workloads(docs):
            what = f"{name}: {workload['kind']}/{workload['metadata']['name']}"
            spec = pod_template(workload)["spec"]
            assert spec["automountServiceAccountToken"] is False, what
            assert spec.get("serviceAccountName", "default") != "default", what
            # Service links would put SCOREBOX_SERVICE_* variables of Kubernetes' own in the
            # environment that the settings read.
            assert spec["enableServiceLinks"] is False, what
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), what
            pod = spec["securityContext"]
            assert pod["seccompProfile"]["type"] == "RuntimeDefault", what
            for container in _containers(pod_template(workload)):
                context = pod | container["securityContext"]
                where = f"{what} container {container['name']}"
                assert context["runAsNonRoot"] is True, where
                assert context["runAsUser"] >= 10000 and context["runAsGroup"] >= 10000, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["capabilities"] == {"drop": ["ALL"]}, where
                assert not context.get("privileged"), where
                assert context["seccompProfile"]["type"] == "RuntimeDefault", where
                for kind in ("requests", "limits"):
                    assert set(container["resources"][kind]) == {
                        "cpu",
                        "memory",
                        "ephemeral-storage",
                    }, (where, kind)


def test_images_are_pinned_never_latest(rendered: dict[str, list[Manifest]]) -> None:
    for name, docs in rendered.items():
        for workload in _workloads(docs):
            for container in _containers(pod_template(workload)):
                image = container["image"]
                tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
                assert (tag and tag != "latest") or "@sha256:" in image, (name, image)
                assert container["imagePullPolicy"] == "Always", (name, image)


def test_every_writable_path_is_an_empty_dir_and_the_model_store_is_one(
    rendered: dict[str, list[Manifest]],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    home = re.search(r"BENTOML_HOME=(\S+)", dockerfile)
    assert home, "the Dockerfile sets BENTOML_HOME"
    cluster = Cluster(rendered["keda"], SECRETS)
    for container in cluster.containers():
        assert container.read_only_root, container.workload
        assert "/tmp" in container.writable, (container.workload, container.name)
        if not container.init:
            # BentoML writes its home when imported: an emptyDir, never the image.
            assert container.writable.get(home.group(1)), (container.workload, container.name)
        for path in container.files:
            assert path not in container.writable


def _probes(container: Manifest) -> dict[str, Manifest]:
    return {
        k: container[f"{k}Probe"]
        for k in ("startup", "liveness", "readiness")
        if f"{k}Probe" in container
    }


def test_long_running_pods_have_cheap_distinct_probes(
    rendered: dict[str, list[Manifest]],
) -> None:
    for name, docs in rendered.items():
        for deployment in (d for d in docs if d["kind"] == "Deployment"):
            for container in pod_template(deployment)["spec"]["containers"]:
                what = f"{name}: {deployment['metadata']['name']}/{container['name']}"
                probes = _probes(container)
                assert set(probes) == {"startup", "liveness", "readiness"}, what
                assert probes["liveness"] != probes["readiness"], what
                for probe in probes.values():
                    # `celery inspect ping` costs seconds of CPU and fails while the broker blips.
                    command = " ".join(probe.get("exec", {}).get("command", []))
                    assert "celery" not in command and "inspect" not in command, what
                    assert probe["timeoutSeconds"] < probe["periodSeconds"], what


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        inside = value in expression.get("values", [])
        if expression["operator"] == "In" and not inside:
            return False
        if expression["operator"] == "NotIn" and inside:
            return False
        if expression["operator"] == "Exists" and value is None:
            return False
    return True


def test_every_deployment_of_several_pods_has_a_pdb_that_lets_a_drain_through(
    rendered: dict[str, list[Manifest]],
) -> None:
    for name, docs in _overlays(rendered):
        scaled = {
            d["spec"]["scaleTargetRef"]["name"]: d["spec"].get(
                "maxReplicas", d["spec"].get("maxReplicaCount")
            )
            for d in docs
            if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        }
        for deployment in (d for d in docs if d["kind"] == "Deployment"):
            most = scaled.get(deployment["metadata"]["name"], deployment["spec"].get("replicas", 1))
            labels = pod_template(deployment)["metadata"]["labels"]
            budgets = [
                d
                for d in docs
                if d["kind"] == "PodDisruptionBudget" and _selects(d["spec"]["selector"], labels)
            ]
            if most > 1:
                assert len(budgets) == 1, (name, deployment["metadata"]["name"])
                assert budgets[0]["spec"].get("maxUnavailable", 0) >= 1, budgets[0]
            else:
                assert not budgets, "a PDB over one pod would block every drain"


def _policies(docs: list[Manifest], labels: dict[str, str]) -> list[Manifest]:
    return [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and _selects(d["spec"]["podSelector"], labels)
    ]


def _flows(policies: list[Manifest], direction: str) -> set[tuple[str, int]]:
    """(peer, port) pairs allowed: peer is a component, ``dns`` or ``any``."""
    flows = set()
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get("to" if direction == "egress" else "from") or [{}]
            for peer in peers:
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                who = (
                    "dns"
                    if labels.get("k8s-app") == "kube-dns"
                    else labels.get("app.kubernetes.io/component", "any")
                )
                for port in rule.get("ports", []):
                    flows.add((who, port["port"]))
    return flows


def test_network_policies_deny_all_but_the_flows_the_stack_needs(
    rendered: dict[str, list[Manifest]],
) -> None:
    dns = {("dns", 53)}
    expected = {
        "service": ({("any", 3000)}, {("any", 5432)} | dns),
        "worker": (set(), {("service", 3000), ("any", 5432), ("any", 6379)} | dns),
        "dashboard": ({("any", 8080)}, {("any", 5432)} | dns),
        "migrate": (set(), {("any", 5432)} | dns),
        "training": (set(), {("any", 5432)} | dns),
        "schedule": (set(), {("any", 6379)} | dns),
    }
    for name, docs in _overlays(rendered):
        for workload in _workloads(docs):
            labels = pod_template(workload)["metadata"]["labels"]
            policies = _policies(docs, labels)
            assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies)
            assert "scorebox-default-deny" in {p["metadata"]["name"] for p in policies}
            ingress, egress = expected[labels["app.kubernetes.io/component"]]
            what = (name, workload["metadata"]["name"])
            assert _flows(policies, "ingress") == ingress, what
            assert _flows(policies, "egress") == egress, what


def test_jobs_and_cronjobs_have_deadlines_and_never_overlap(
    rendered: dict[str, list[Manifest]],
) -> None:
    for name, docs in rendered.items():
        for cron in (d for d in docs if d["kind"] == "CronJob"):
            spec = cron["spec"]
            assert spec["concurrencyPolicy"] == "Forbid", (name, cron["metadata"]["name"])
            assert spec["startingDeadlineSeconds"] > 0 and spec["timeZone"] == "Etc/UTC"
            assert spec["successfulJobsHistoryLimit"] and spec["failedJobsHistoryLimit"]
        jobs = [d["spec"] for d in docs if d["kind"] == "Job"]
        jobs += [d["spec"]["jobTemplate"]["spec"] for d in docs if d["kind"] == "CronJob"]
        for job in jobs:
            assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 1, (name, job)
            assert job["ttlSecondsAfterFinished"] > 0


def test_workers_are_scaled_by_keda_or_an_hpa_never_both(
    rendered: dict[str, list[Manifest]],
) -> None:
    def scalers(docs: list[Manifest], kind: str) -> set[str]:
        return {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == kind}

    keda, hpa = rendered["keda"], rendered["hpa"]
    assert scalers(keda, "ScaledObject") == {"scorebox-worker"}
    assert scalers(keda, "HorizontalPodAutoscaler") == {"scorebox-service"}
    assert scalers(hpa, "HorizontalPodAutoscaler") == {"scorebox-service", "scorebox-worker"}
    assert not scalers(hpa, "ScaledObject")
    for docs in (keda, hpa):
        # Autoscaled: no replicas field for an apply to reset.
        assert "replicas" not in find(docs, "Deployment", "scorebox-worker")["spec"]
    trigger = find(keda, "ScaledObject", "scorebox-worker")["spec"]["triggers"][0]
    auth = find(keda, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "scorebox-secrets", "key": "keda-connection"}
    ]


def test_secrets_come_only_from_the_secrets_the_user_names(
    rendered: dict[str, list[Manifest]],
) -> None:
    secret_settings = {
        "SCOREBOX_DATABASE_URL",
        "SCOREBOX_DASHBOARD_DATABASE_URL",
        "SCOREBOX_REDIS_URL",
        "SCOREBOX_API_TOKEN",
    }
    for name, docs in rendered.items():
        config = find(docs, "ConfigMap", "scorebox-config")["data"]
        assert not secret_settings & set(config), name
        for workload in _workloads(docs):
            template = pod_template(workload)
            component = template["metadata"]["labels"]["app.kubernetes.io/component"]
            mounted = {
                v.get("secret", {}).get("secretName")
                or v.get("configMap", {}).get("name", "").rsplit("-", 1)[0]
                for v in template["spec"].get("volumes", [])
            }
            # The private key only where versions are signed; public keys everywhere else.
            assert ("scorebox-signing-key" in mounted) == (component == "training"), workload
            wants_keys = component in ("service", "worker", "dashboard")
            assert ("scorebox-trusted-keys" in mounted) == wants_keys, workload
            for container in _containers(template):
                for var in container.get("env", []):
                    if var["name"] in secret_settings:
                        assert var["valueFrom"]["secretKeyRef"]["name"] == "scorebox-secrets", var


def test_every_setting_the_manifests_give_is_a_setting_with_a_valid_value(
    rendered: dict[str, list[Manifest]],
) -> None:
    fields = {f.upper() for f in Settings.model_fields}
    cluster = Cluster(rendered["keda"], SECRETS)
    for container in cluster.containers():
        given = {k.removeprefix(ENV_PREFIX) for k in container.env if k.startswith(ENV_PREFIX)}
        assert given <= fields, (container.workload, given - fields)
        load_settings(**{k.lower(): v for k, v in given_values(container).items()})


def given_values(container: Container) -> dict[str, str]:
    """The SCOREBOX_* settings ``container``'s environment gives, without the prefix."""
    return {
        k.removeprefix(ENV_PREFIX): v for k, v in container.env.items() if k.startswith(ENV_PREFIX)
    }


def test_grace_periods_cover_a_chunk_and_the_requests_in_flight(
    rendered: dict[str, list[Manifest]],
) -> None:
    cluster = Cluster(rendered["keda"], SECRETS)
    worker = cluster.container("Deployment/scorebox-worker", "worker")
    settings = load_settings(**{k.lower(): v for k, v in given_values(worker).items()})
    # Warm shutdown finishes the chunks in hand: each ends within its lease (its transactions'
    # timeouts come from it) plus one service call.
    assert worker.grace_seconds >= settings.chunk_lease_seconds + settings.service_timeout + 10
    assert "REMAP_SIGTERM" not in worker.env  # SIGTERM stays Celery's warm shutdown
    service = cluster.container("Deployment/scorebox-service", "service")
    traffic = re.search(
        r'traffic=\{"timeout": (\d+)\}', (ROOT / "service" / "service.py").read_text()
    )
    assert traffic, "service/service.py sets BentoML's traffic timeout"
    assert service.pre_stop_sleep > 0
    assert service.grace_seconds >= service.pre_stop_sleep + int(traffic.group(1)) + 5


def test_a_changed_setting_or_trusted_key_rolls_the_pods(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    overlay = copy / "overlays" / "changed"
    shutil.copytree(copy / "overlays" / "keda", overlay)
    before = {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] in WORKLOADS}
    (overlay / "keys").mkdir()
    (overlay / "keys" / "ops.pub").write_text("-----BEGIN PUBLIC KEY-----\n...\n")
    with (overlay / "kustomization.yaml").open("a") as out:
        out.write(
            "configMapGenerator:\n"
            "  - name: scorebox-config\n    behavior: merge\n"
            "    literals: [SCOREBOX_CHUNK_SIZE=20000]\n"
            "  - name: scorebox-trusted-keys\n    behavior: merge\n"
            "    files: [keys/ops.pub]\n"
        )
    after = {d["metadata"]["name"]: d for d in render(overlay) if d["kind"] in WORKLOADS}
    assert set(before) == set(after)
    for name in before:
        assert pod_template(before[name]) != pod_template(after[name]), f"{name} would not roll"


def test_the_keda_trigger_counts_this_deployments_backlog(
    rendered: dict[str, list[Manifest]], engine: Engine, settings: Settings
) -> None:
    config = find(rendered["keda"], "ConfigMap", "scorebox-config")["data"]
    trigger = find(rendered["keda"], "ScaledObject", "scorebox-worker")["spec"]["triggers"][0]
    assert trigger["type"] == "postgresql"
    query = trigger["metadata"]["query"]
    assert f"j.queue = '{config['SCOREBOX_QUEUE']}'" in query
    upgrade(engine, settings.predictions_table)
    ours, other = config["SCOREBOX_QUEUE"], "scorebox.other"
    jobs = [
        (1, ours, "running"),
        (2, ours, "queued"),
        (3, ours, "succeeded"),
        (4, other, "running"),
    ]
    chunk_states = ["pending", "running", "done", "failed", "cancelled"]
    with engine.begin() as conn:
        for job_id, queue, status in jobs:
            conn.execute(
                text(
                    "INSERT INTO scorebox_jobs (id, table_name, model_tag, mode, status, queue) "
                    "VALUES (:id, 'features', 'scorebox:v1', 'all', :status, :queue)"
                ),
                {"id": job_id, "status": status, "queue": queue},
            )
            for chunk_no, state in enumerate(chunk_states):
                conn.execute(
                    text(
                        "INSERT INTO scorebox_chunks (job_id, chunk_no, id_lo, id_hi, status) "
                        "VALUES (:job, :no, '1', '2', :status)"
                    ),
                    {"job": job_id, "no": chunk_no, "status": state},
                )
        counted = conn.execute(text(query)).scalar()
    # Pending and running chunks of the two active jobs of this queue.
    assert counted == 4
    assert int(trigger["metadata"]["targetQueryValue"]) >= 1


def _options(command: Any, args: list[str]) -> None:
    """Every ``--option`` in ``args`` is one ``command`` takes."""
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    given = {a.split("=")[0] for a in args if a.startswith("--")}
    assert given <= known, (command.name, given - known)


def _subcommand(group: Any, args: list[str]) -> tuple[Any, list[str]]:
    # Click's or Typer's own copy of it: a group is what has commands.
    while hasattr(group, "commands") and args and not args[0].startswith("-"):
        assert args[0] in group.commands, (group.name, args[0])
        group, args = group.commands[args[0]], args[1:]
    return group, args


def test_every_command_and_probe_the_manifests_run_exists(
    rendered: dict[str, list[Manifest]],
) -> None:
    import typer.main
    from bentoml_cli.cli import cli as bentoml_cli
    from celery.bin.celery import celery

    from scorebox_cli import app
    from service.front import HEALTH_PATHS

    scorebox_cli = typer.main.get_command(app)
    seen = set()
    for container in Cluster(rendered["keda"], SECRETS).containers():
        program, *args = container.argv
        seen.add(program)
        if program == "scorebox":
            command, rest = _subcommand(scorebox_cli, args)
            _options(command, rest)
        elif program == "celery":
            assert args[:2] == ["-A", "worker"]
            command, rest = _subcommand(celery, args[2:])
            _options(command, rest)
        elif program == "bentoml":
            command, rest = _subcommand(bentoml_cli, args)
            assert rest[0] == "." and (ROOT / "bentofile.yaml").exists()
            _options(command, rest[1:])
        else:
            pytest.fail(f"{container.workload} runs {program}")
        for probe in container.probes.values():
            if container.workload.endswith("scorebox-service"):
                assert probe.action == "http" and probe.path in HEALTH_PATHS
                assert probe.port == 3000 and "3000" in container.argv
            if container.workload.endswith("scorebox-worker"):
                assert probe.action == "exec"
                name = health.LIVE if probe.kind != "readiness" else health.READY
                assert name in " ".join(probe.command)
    assert seen == {"scorebox", "celery", "bentoml"}


def test_the_dashboard_probes_a_page_it_serves(rendered: dict[str, list[Manifest]]) -> None:
    from dashboard.app import make_app

    dashboard = Cluster(rendered["keda"], SECRETS).container(
        "Deployment/scorebox-dashboard", "dashboard"
    )
    script = dashboard.probes["readiness"].command[-1]
    url = re.search(r"'http://127\.0\.0\.1:(\d+)(/[^']*)'", script)
    assert url and int(url.group(1)) == dashboard.ports["http"]
    routes = {getattr(r, "path", None) for r in make_app(load_settings()).routes}
    assert url.group(2) in routes
    assert "SCOREBOX_API_TOKEN" in script  # the token from the environment, not the manifest


def _checkov() -> Path:
    found = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"
    if not found.exists():
        if os.environ.get("CI"):
            pytest.fail("checkov is missing: scripts/test installs it in .venv/tools/checkov")
        pytest.skip("checkov not installed (scripts/test installs it)")
    return found


def test_checkov_finds_nothing_but_the_two_justified_exceptions(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    checkov = _checkov()
    for name, docs in _overlays(rendered):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    # --skip-download and BC_SKIP_MAPPING: checkov asks its vendor's API for nothing.
    done = subprocess.run(
        [
            *(str(checkov), "-d", str(tmp_path), "--framework", "kubernetes"),
            *("--skip-download", "--output", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert not failed, failed
    # The exceptions, each annotated where it is taken (base/kustomization.yaml says why).
    assert {c["check_id"] for c in results["skipped_checks"]} == {"CKV_K8S_35", "CKV_K8S_43"}
    assert report["summary"]["passed"] > 500


def test_the_container_description_is_what_the_kubelet_would_run(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    cluster = Cluster(rendered["keda"], SECRETS)
    worker = cluster.container("Deployment/scorebox-worker", "worker")
    assert worker.argv[:4] == ["celery", "-A", "worker", "worker"]
    assert worker.env["SCOREBOX_DATABASE_URL"] == SECRETS["scorebox-secrets"]["worker-database-url"]
    assert worker.env["SCOREBOX_QUEUE"] == "scorebox.scorebox"
    assert worker.user == (10001, 10001) and worker.read_only_root
    assert worker.writable["/tmp"] == 256 * 2**20
    assert worker.probes["readiness"].command[:2] == ["sh", "-c"]
    assert worker.grace_seconds == 390
    training = cluster.container("Job/scorebox-training", "training")
    assert training.files["/var/run/scorebox/signing"] == {
        "ed25519.pem": b"-----BEGIN PRIVATE KEY-----\n...\n"
    }
    service = cluster.container("Deployment/scorebox-service", "service")
    assert service.probes["liveness"].port == 3000 and service.probes["liveness"].path == "/livez"
    assert service.pre_stop_sleep == 5
    # Without the optional token key, the variable is absent (no auth), as the kubelet does.
    tokenless = {
        "scorebox-secrets": {
            k: v for k, v in SECRETS["scorebox-secrets"].items() if k != "api-token"
        }
    }
    assert (
        "SCOREBOX_API_TOKEN"
        not in Cluster(rendered["keda"], SECRETS | tokenless)
        .container("Deployment/scorebox-service", "service")
        .env
    )
    with pytest.raises(AssertionError, match="scorebox-secrets has no key"):
        Cluster(rendered["keda"], {"scorebox-secrets": {}}).container(
            "Deployment/scorebox-service", "service"
        )
    run = DockerRun(service, tmp_path / "files")
    run.write_files()
    argv = run.argv("scorebox-service", network="scorebox")
    assert argv[:2] == ["docker", "run"] and "--read-only" in argv
    assert argv[argv.index("--user") + 1] == "10001:10001"
    assert "/home/scorebox/bentoml:rw,mode=1777,uid=10001,gid=10001,size=1610612736" in argv
    trusted = tmp_path / "files/etc/scorebox/trusted"
    assert f"type=bind,source={trusted},destination=/etc/scorebox/trusted,readonly" in argv
    assert argv[argv.index("--stop-timeout") + 1] == "75"
    assert (
        argv[-8:]
        == [
            "--entrypoint",
            "bentoml",
            "registry.example.com/scorebox-app:0.1.0",
            "serve",
            ".",
            "--host",
            "0.0.0.0",
            "--port",
            "3000",
        ][-8:]
    )
    assert "SCOREBOX_API_TOKEN=a-token" in argv


class _Proxy:
    """A TCP forwarder to a server that can be taken away (connections refused and cut) and
    brought back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def away(self) -> None:
        self.up.clear()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open.clear()

    def back(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.away()
        self.listener.close()


def _probe_passes(container: Container, kind: str, env: dict[str, str]) -> bool:
    probe = container.probes[kind]
    done = subprocess.run(probe.command, env=env, capture_output=True, timeout=probe.timeout)
    return done.returncode == 0


def _until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


@pytest.mark.slow
def test_worker_probes_pass_when_healthy_and_readiness_fails_while_postgres_or_redis_is_away(
    rendered: dict[str, list[Manifest]],
    database: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    proxy, broker = _Proxy(PG_HOST, 5432), _Proxy("127.0.0.1", 6379)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}"
    redis_db = redis_url.rsplit("/", 1)[1]
    secrets = SECRETS | {
        "scorebox-secrets": SECRETS["scorebox-secrets"]
        | {
            "worker-database-url": url,
            "redis-url": f"redis://127.0.0.1:{broker.port}/{redis_db}",
        }
    }
    worker = Cluster(rendered["keda"], secrets).container("Deployment/scorebox-worker", "worker")
    base = child_env()
    # The pod's /tmp emptyDir is this test's folder; the probes read TMPDIR as the worker does.
    env = base | worker.env | {"TMPDIR": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml")}
    program, *args = worker.argv
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / program), *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for kind in ("startup", "liveness", "readiness"):
            assert _until(lambda k=kind: _probe_passes(worker, k, env), 60), (
                kind,
                (tmp_path / "worker.log").read_text()[-3000:],
            )
        proxy.away()
        ready = worker.probes["readiness"]
        assert _until(lambda: not _probe_passes(worker, "readiness", env), 40)
        # Alive all the same: a database that is away never restarts a worker.
        assert _probe_passes(worker, "liveness", env)
        assert ready.failure_threshold == 1
        proxy.back()
        assert _until(lambda: _probe_passes(worker, "readiness", env), 30)
        # A broker blip: unready while it lasts, alive throughout, and the event loop's file is
        # touched again once the worker reconnected.
        live = tmp_path / health.LIVE
        broker.away()
        assert _until(lambda: not _probe_passes(worker, "readiness", env), 40)
        assert _probe_passes(worker, "liveness", env)
        broker.back()
        back = time.time()
        assert _until(lambda: _probe_passes(worker, "readiness", env), 60)
        assert _until(lambda: live.stat().st_mtime > back, 30), (
            tmp_path / "worker.log"
        ).read_text()[-3000:]
        assert _probe_passes(worker, "liveness", env)
        assert process.poll() is None
    finally:
        stop(process)
        log.close()
        proxy.close()
        broker.close()
    # Stopped: it says so to its probes at once.
    assert not _probe_passes(worker, "readiness", env)


def test_the_schedules_command_queues_the_scheduled_run(
    rendered: dict[str, list[Manifest]], redis_url: str
) -> None:
    import redis

    secrets = SECRETS | {"scorebox-secrets": SECRETS["scorebox-secrets"] | {"redis-url": redis_url}}
    schedule = Cluster(rendered["keda"], secrets).container("CronJob/scorebox-schedule", "schedule")
    base = child_env()
    program, *args = schedule.argv
    client = redis.Redis.from_url(redis_url)
    queue = schedule.env["SCOREBOX_QUEUE"]
    client.delete(queue)
    done = subprocess.run(
        [str(BIN / program), *args],
        cwd=ROOT,
        env=base | schedule.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (message,) = client.lrange(queue, 0, -1)
    assert json.loads(message)["headers"]["task"] == "scorebox.score_new_rows"
    client.delete(queue)
