"""The Kubernetes manifests (deploy/kubernetes) rendered, and each container described as the
kubelet would run it: the argv, the environment with every reference resolved, the file system
(read-only root, emptyDirs, files from ConfigMaps and Secrets), the probes and the grace period.

The manifest tests check the description; the container test runs it with a real engine
(:class:`DockerRun`) or as a local process.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")

Manifest = dict[str, Any]


def kubectl() -> str:
    """The kubectl that renders Kustomize offline (the machine image has it)."""
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: it renders the Kustomize manifests")
        pytest.skip("kubectl not installed")
    return found


def render(folder: Path) -> list[Manifest]:
    """``kubectl kustomize folder``: every object it renders."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pod_template(workload: Manifest) -> Manifest:
    """The pod template of a Deployment, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]  # type: ignore[no-any-return]


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` whose name is ``name`` (a generated one: ``name-<hash>``)."""
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            d["metadata"]["name"] == name
            or re.fullmatch(rf"{name}-[a-z0-9]{{10}}", d["metadata"]["name"])
        )
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@dataclass(frozen=True)
class Probe:
    """A probe as the kubelet runs it: an HTTP GET, a TCP connect or a command in the container."""

    kind: str  # startup, liveness, readiness
    action: str  # http, tcp, exec
    port: int | None
    path: str | None
    command: list[str]
    period: int
    timeout: int
    failure_threshold: int
    initial_delay: int


@dataclass(frozen=True)
class Container:
    """One container of a rendered pod, with everything it takes resolved."""

    workload: str  # e.g. Deployment/scorebox-worker
    name: str
    init: bool
    image: str
    argv: list[str]
    workdir: str | None
    env: dict[str, str]
    user: tuple[int, int]
    read_only_root: bool
    # Mount path -> size limit (bytes, 0 if none) of each writable emptyDir.
    writable: dict[str, int]
    # Mount path -> {file name: bytes} of each ConfigMap or Secret volume (read-only).
    files: dict[str, dict[str, bytes]]
    ports: dict[str, int]
    probes: dict[str, Probe]
    grace_seconds: int
    pre_stop_sleep: int


def _quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    number = re.fullmatch(r"(\d+)([KMG]i?)?", str(text))
    assert number, f"not a quantity: {text}"
    return int(number.group(1)) * units.get(number.group(2) or "", 1)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values ($$ escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _data(obj: Manifest) -> dict[str, bytes]:
    if obj["kind"] == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} | {
            k: v.encode() for k, v in (obj.get("stringData") or {}).items()
        }
    return {k: v.encode() for k, v in (obj.get("data") or {}).items()}


class Cluster:
    """The objects a pod's references resolve against: the rendered ones, and the Secrets the
    user creates (never rendered), given as ``{name: {key: value}}``."""

    def __init__(self, docs: list[Manifest], secrets: dict[str, dict[str, str]]) -> None:
        self.docs = docs
        self.secrets = {
            name: {k: v.encode() for k, v in data.items()} for name, data in secrets.items()
        }

    def data(self, kind: str, name: str, optional: bool = False) -> dict[str, bytes] | None:
        if kind == "Secret" and name in self.secrets:
            return self.secrets[name]
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        if not found:
            # The kubelet refuses to start such a container (CreateContainerConfigError).
            assert optional, f"{kind}/{name} is neither rendered nor given"
            return None
        return _data(found[0])

    def containers(self) -> Iterator[Container]:
        """Every container (init containers first) of every workload rendered."""
        for workload in self.docs:
            if workload["kind"] in WORKLOADS:
                template = pod_template(workload)
                spec = template["spec"]
                for init, items in (
                    (True, spec.get("initContainers", [])),
                    (False, spec["containers"]),
                ):
                    for item in items:
                        yield self._container(workload, spec, item, init)

    def container(self, workload: str, name: str) -> Container:
        """The container ``name`` of ``workload`` (``Kind/name``)."""
        (found,) = [c for c in self.containers() if c.workload == workload and c.name == name]
        return found

    def _env(self, item: Manifest) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in item.get("envFrom", []):
            kind, ref = (
                ("ConfigMap", source["configMapRef"])
                if "configMapRef" in source
                else ("Secret", source["secretRef"])
            )
            data = self.data(kind, ref["name"], ref.get("optional", False)) or {}
            env.update({source.get("prefix", "") + k: v.decode() for k, v in data.items()})
        for var in item.get("env", []):
            if "value" in var:
                env[var["name"]] = _expand(var["value"], env)
                continue
            origin = var["valueFrom"]
            kind, ref = (
                ("ConfigMap", origin["configMapKeyRef"])
                if "configMapKeyRef" in origin
                else ("Secret", origin["secretKeyRef"])
            )
            optional = ref.get("optional", False)
            data = self.data(kind, ref["name"], optional) or {}
            if ref["key"] in data:
                env[var["name"]] = data[ref["key"]].decode()
            else:
                assert optional, f"{kind}/{ref['name']} has no key {ref['key']}"
        return env

    def _container(
        self, workload: Manifest, spec: Manifest, item: Manifest, init: bool
    ) -> Container:
        pod_context = spec.get("securityContext", {})
        context = pod_context | item.get("securityContext", {})
        env = self._env(item)
        argv = [_expand(a, env) for a in item.get("command", []) + item.get("args", [])]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        writable: dict[str, int] = {}
        files: dict[str, dict[str, bytes]] = {}
        for mount in item.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                assert not mount.get("readOnly"), mount
                writable[mount["mountPath"]] = _quantity(volume["emptyDir"].get("sizeLimit", "0"))
            elif "configMap" in volume or "secret" in volume:
                kind, source = (
                    ("ConfigMap", volume["configMap"])
                    if "configMap" in volume
                    else ("Secret", volume["secret"])
                )
                name = source.get("name") or source.get("secretName")
                data = self.data(kind, name, source.get("optional", False)) or {}
                files[mount["mountPath"]] = data
            else:
                raise AssertionError(f"a volume this helper cannot describe: {volume}")
        ports = {
            p.get("name", str(p["containerPort"])): p["containerPort"]
            for p in item.get("ports", [])
        }
        probes = {}
        for kind in ("startup", "liveness", "readiness"):
            probe = item.get(f"{kind}Probe")
            if probe is None:
                continue
            if "httpGet" in probe:
                action, target = "http", probe["httpGet"]
            elif "tcpSocket" in probe:
                action, target = "tcp", probe["tcpSocket"]
            else:
                action, target = "exec", probe["exec"]
            port = target.get("port")
            probes[kind] = Probe(
                kind=kind,
                action=action,
                port=ports[port] if isinstance(port, str) else port,
                path=target.get("path"),
                command=list(target.get("command", [])),
                period=probe.get("periodSeconds", 10),
                timeout=probe.get("timeoutSeconds", 1),
                failure_threshold=probe.get("failureThreshold", 3),
                initial_delay=probe.get("initialDelaySeconds", 0),
            )
        pre_stop = item.get("lifecycle", {}).get("preStop", {})
        return Container(
            workload=f"{workload['kind']}/{workload['metadata']['name']}",
            name=item["name"],
            init=init,
            image=item["image"],
            argv=argv,
            workdir=item.get("workingDir"),
            env=env,
            user=(context.get("runAsUser", -1), context.get("runAsGroup", -1)),
            read_only_root=bool(context.get("readOnlyRootFilesystem")),
            writable=writable,
            files=files,
            ports=ports,
            probes=probes,
            grace_seconds=spec.get("terminationGracePeriodSeconds", 30),
            pre_stop_sleep=pre_stop.get("sleep", {}).get("seconds", 0),
        )


@dataclass(frozen=True)
class DockerRun:
    """How to start a :class:`Container` with a Docker engine."""

    container: Container
    files_root: Path
    extra: list[str] = field(default_factory=list)

    def write_files(self) -> None:
        """Write the ConfigMap and Secret volumes' files under :attr:`files_root`, readable by
        the container's user only through its group (as fsGroup makes them)."""
        for mount, data in self.container.files.items():
            folder = self.files_root / mount.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            for name, content in data.items():
                (folder / name).write_bytes(content)
                (folder / name).chmod(0o444)

    def argv(self, name: str, network: str | None = None) -> list[str]:
        """``docker run`` arguments (detached) for this container named ``name``."""
        c = self.container
        uid, gid = c.user
        args = ["docker", "run", "--detach", "--name", name, "--user", f"{uid}:{gid}"]
        args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        if c.read_only_root:
            args.append("--read-only")
        if network:
            args += ["--network", network]
        # An emptyDir is a new directory the pod's user can write. A tmpfs over a folder the
        # image has takes that folder's mode with root as owner (Docker copies it up), so the
        # tmpfs is made the user's.
        for path, size in sorted(c.writable.items()):
            options = f"rw,mode=1777,uid={uid},gid={gid}" + (f",size={size}" if size else "")
            args += ["--tmpfs", f"{path}:{options}"]
        for path in sorted(c.files):
            source = self.files_root / path.lstrip("/")
            args += ["--mount", f"type=bind,source={source},destination={path},readonly"]
        for key, value in sorted(c.env.items()):
            args += ["--env", f"{key}={value}"]
        if c.workdir:
            args += ["--workdir", c.workdir]
        # The kubelet's grace period: `docker stop` waits this long after SIGTERM.
        args += ["--stop-timeout", str(c.grace_seconds), *self.extra]
        if c.argv:
            args += ["--entrypoint", c.argv[0], c.image, *c.argv[1:]]
        else:
            args.append(c.image)
        return args
