"""Static checks of deploy/: the manifests parse and agree with the settings and the CLI.

Nothing here talks to Docker, Kubernetes or a network; the files are read as data.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotcheck.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# The CLI commands a deployment may run (`spotcheck up` is for a laptop, never deployed).
ALLOWED_INVOCATIONS = {
    ("db", "migrate"),
    ("topics", "create"),
    ("run", "api"),
    ("run", "relay"),
    ("run", "verdicts"),
    ("run", "sink"),
    ("run", "push"),
    ("run", "custody"),
    ("run", "streams"),
}
LONG_RUNNING = {inv for inv in ALLOWED_INVOCATIONS if inv[0] == "run"}
ONE_SHOT = ALLOWED_INVOCATIONS - LONG_RUNNING
# Kept out of kustomization.yaml on purpose: applying it would overwrite the real Secrets.
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}

ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))
SETTING_VARS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
SETTING_VAR_RE = re.compile(r"\b" + re.escape(ENV_PREFIX) + r"[A-Za-z0-9_]+")
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/env"}


# ---------------------------------------------------------------------------------------------
# Reading the files


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one,
    kubectl and compose reject the file). Keys merged in with `<<` may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.load_all(fh, Loader=StrictLoader) if doc is not None]


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            yield path, doc


def compose() -> dict[str, Any]:
    (doc,) = load_docs(COMPOSE)
    return doc


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    rest = rest.strip()
    if rest.startswith("["):
        value = json.loads(rest)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
        return value
    return ["/bin/sh", "-c", rest]


def image_entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    """ENTRYPOINT and CMD of the final stage of deploy/Dockerfile."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            entrypoint, cmd = [], []
        elif word == "ENTRYPOINT":
            entrypoint = _exec_form(rest)
        elif word == "CMD":
            cmd = _exec_form(rest)
    return entrypoint, cmd


def _as_argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), value
    return [str(v) for v in value]


def effective_argv(entrypoint: Any, command: Any) -> list[str]:
    """What a container runs: Docker/Kubernetes semantics for overriding ENTRYPOINT and CMD.

    `entrypoint` is compose's entrypoint / Kubernetes' command; `command` is compose's
    command / Kubernetes' args. Replacing the entrypoint drops the image's CMD.
    """
    image_ep, image_cmd = image_entrypoint_and_cmd()
    ep = _as_argv(entrypoint)
    cmd = _as_argv(command)
    if ep is not None:
        return ep + (cmd or [])
    return image_ep + (cmd if cmd is not None else image_cmd)


def spotcheck_invocations(argv: list[str]) -> list[tuple[str, ...]]:
    """Every `spotcheck ...` call in argv, also inside `sh -c` scripts."""
    if not argv:
        return []
    if Path(argv[0]).name == "spotcheck":
        return [tuple(argv[1:])]
    if argv[0] in SHELLS and "-c" in argv:
        script = argv[argv.index("-c") + 1]
        found = []
        for segment in re.split(r"&&|\|\||[;|\n]", script):
            segment = segment.strip().removeprefix("exec ")
            try:
                words = shlex.split(segment)
            except ValueError:  # a quote split by the separators above
                words = segment.split()
            if words and Path(words[0]).name == "spotcheck":
                found.append(tuple(words[1:]))
        return found
    return []


def is_spotcheck_image(image: str) -> bool:
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return name == "spotcheck"


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload in deploy/k8s."""
    for _path, doc in k8s_docs():
        kind = doc.get("kind")
        if kind == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]
        elif kind in POD_TEMPLATE_KINDS:
            yield f"{kind}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            yield f"CronJob/{doc['metadata']['name']}", spec


def k8s_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, spec in pod_specs():
        for key in ("initContainers", "containers"):
            for container in spec.get(key) or []:
                yield f"{where}/{container['name']}", container


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def compose_spotcheck_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose_services().items()
        if "build" in svc or is_spotcheck_image(str(svc.get("image", "")))
    }


def compose_invocation(svc: dict[str, Any]) -> tuple[str, ...]:
    (inv,) = spotcheck_invocations(effective_argv(svc.get("entrypoint"), svc.get("command")))
    return inv


def k8s_invocation(container: dict[str, Any]) -> tuple[str, ...]:
    argv = effective_argv(container.get("command"), container.get("args"))
    (inv,) = spotcheck_invocations(argv)
    return inv


# ---------------------------------------------------------------------------------------------
# Every YAML document parses


def test_deploy_has_the_expected_files() -> None:
    assert DOCKERFILE.is_file()
    assert COMPOSE.is_file()
    assert (K8S / "kustomization.yaml").is_file()
    assert (DEPLOY / "README.md").is_file()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_into_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is {type(doc).__name__}, not a mapping"
        if path.parent == K8S and path.name != "kustomization.yaml":
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc.get('kind')} has no name"


# ---------------------------------------------------------------------------------------------
# Settings: every SPOTCHECK_* variable is a field of Settings, and the values validate


def test_every_spotcheck_variable_in_deploy_is_a_setting() -> None:
    seen: dict[str, set[str]] = {}
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in SETTING_VAR_RE.findall(path.read_text(encoding="utf-8")):
            seen.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    unknown = {name: sorted(files) for name, files in seen.items() if name not in SETTING_VARS}
    assert not unknown, f"not fields of spotcheck.settings.Settings: {unknown}"
    # The scan must have found the variables a deployment cannot do without.
    assert {ENV_PREFIX + "KAFKA_BOOTSTRAP", ENV_PREFIX + "DATABASE_URL"} <= seen.keys()


def _interpolate(value: str) -> str:
    """Compose interpolation with a stand-in for required variables."""
    value = re.sub(r"\$\{(\w+):?\?[^}]*\}", "required-value", value)
    return re.sub(r"\$\{(\w+):?-([^}]*)\}", r"\2", value)


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in SETTING_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def _configmap_data() -> dict[str, str]:
    maps = [doc for _p, doc in k8s_docs() if doc["kind"] == "ConfigMap"]
    assert maps, "no ConfigMap in deploy/k8s"
    data: dict[str, str] = {}
    for cm in maps:
        data.update(cm.get("data") or {})
    return data


def _secret_data() -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: {**(doc.get("stringData") or {}), **(doc.get("data") or {})}
        for _p, doc in k8s_docs()
        if doc["kind"] == "Secret"
    }


def _production_settings_hold(settings: Settings, replication: int) -> None:
    assert not settings.embedded_broker and not settings.embedded_database
    assert settings.session_timeout_ms == 45_000
    assert settings.rebalance_timeout_ms == 60_000
    assert settings.heartbeat_interval_ms == 3_000
    assert settings.one_record_batches is False
    assert settings.topic_replication == replication
    assert settings.log_json is True
    assert settings.http_host == "0.0.0.0" and settings.http_port == 8080
    assert settings.admin_token is not None


def test_compose_environment_is_valid_production_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, svc in compose_spotcheck_services().items():
        env = {k: _interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}
        assert env, f"compose service {name} has no environment"
        _production_settings_hold(_settings_from(env, monkeypatch), replication=1)


def test_compose_admin_token_is_a_required_variable() -> None:
    for name, svc in compose_spotcheck_services().items():
        raw = str((svc.get("environment") or {}).get(ENV_PREFIX + "ADMIN_TOKEN", ""))
        assert re.fullmatch(r"\$\{" + ENV_PREFIX + r"ADMIN_TOKEN:\?[^}]+\}", raw), (
            f"compose service {name}: admin token must be ${{{ENV_PREFIX}ADMIN_TOKEN:?...}}"
        )


def test_k8s_configmap_and_secret_are_valid_production_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = dict(_configmap_data())
    secret_only = {ENV_PREFIX + "DATABASE_URL", ENV_PREFIX + "ADMIN_TOKEN"}
    assert not secret_only & env.keys(), "credentials belong in the Secret, not the ConfigMap"
    for values in _secret_data().values():
        env.update({k: v for k, v in values.items() if k.startswith(ENV_PREFIX)})
    _production_settings_hold(_settings_from(env, monkeypatch), replication=3)


def test_k8s_references_resolve() -> None:
    """envFrom / secretKeyRef names point at the ConfigMap and the (example) Secrets."""
    configmaps = {doc["metadata"]["name"] for _p, doc in k8s_docs() if doc["kind"] == "ConfigMap"}
    secrets = _secret_data()
    for where, container in k8s_containers():
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps, where
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, where
        for var in container.get("env") or []:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets.get(ref["name"], {}), f"{where}: {ref}"


# ---------------------------------------------------------------------------------------------
# The CLI: only the deployable commands, parsed out of the files


def test_dockerfile_entrypoint_and_default_command() -> None:
    entrypoint, cmd = image_entrypoint_and_cmd()
    assert entrypoint == ["spotcheck"]
    assert spotcheck_invocations(entrypoint + cmd) == [("run", "api")]


def test_dockerfile_image() -> None:
    instructions = dockerfile_instructions()
    final = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    stage = instructions[final:]
    assert stage[0][1].split()[0] == "python:3.11-slim"
    users = [rest.split(":")[0] for word, rest in stage if word == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must run as a non-root user"
    assert any(word == "EXPOSE" and "8080" in rest.split() for word, rest in stage)
    (healthcheck,) = (rest for word, rest in stage if word == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "urllib" in healthcheck


def test_dockerfile_copies_every_package_of_the_distribution() -> None:
    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8"))
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*").rstrip(".") for pattern in includes}
    copied = {
        rest.split()[0].rstrip("/")
        for word, rest in dockerfile_instructions()
        if word == "COPY" and not rest.startswith("--from")
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert "pyproject.toml" in {
        part for word, rest in dockerfile_instructions() if word == "COPY" for part in rest.split()
    }


def test_invocation_parsing_sees_through_shells() -> None:
    # The parsing itself, so the checks below cannot pass by not recognising a command.
    assert spotcheck_invocations(["sh", "-c", "spotcheck db migrate && exec spotcheck up"]) == [
        ("db", "migrate"),
        ("up",),
    ]
    assert spotcheck_invocations(["/usr/local/bin/spotcheck", "run", "sink"]) == [("run", "sink")]


def test_compose_runs_only_deployable_commands() -> None:
    services = compose_spotcheck_services()
    assert services, "no spotcheck service in compose.yaml"
    invocations = {}
    for name, svc in services.items():
        inv = compose_invocation(svc)
        assert inv in ALLOWED_INVOCATIONS, f"compose service {name} runs `spotcheck {' '.join(inv)}`"
        invocations[name] = inv
    assert set(invocations.values()) == ALLOWED_INVOCATIONS, "compose must run every role"
    for name, svc in compose_services().items():
        if name not in services:  # another image: only what the file itself says to run
            argv = [*(_as_argv(svc.get("entrypoint")) or []), *(_as_argv(svc.get("command")) or [])]
            assert not spotcheck_invocations(argv), name


def test_k8s_runs_only_deployable_commands() -> None:
    seen = set()
    for where, container in k8s_containers():
        if is_spotcheck_image(container["image"]):
            argv = effective_argv(container.get("command"), container.get("args"))
            found = spotcheck_invocations(argv)
            assert found, f"{where}: a spotcheck container that runs no spotcheck command: {argv}"
        else:  # another image: only what the manifest itself says to run
            argv = [*(container.get("command") or []), *(container.get("args") or [])]
            found = spotcheck_invocations(argv)
        for inv in found:
            assert inv in ALLOWED_INVOCATIONS, f"{where} runs `spotcheck {' '.join(inv)}`"
            seen.add(inv)
    assert seen == ALLOWED_INVOCATIONS, "the manifests must run every role"


def test_k8s_migrate_job_migrates_before_creating_topics() -> None:
    jobs = [spec for where, spec in pod_specs() if where.startswith("Job/")]
    assert len(jobs) == 1
    (job,) = jobs
    order = [k8s_invocation(c) for c in (job.get("initContainers") or []) + job["containers"]]
    assert order == [("db", "migrate"), ("topics", "create")]
    assert job["restartPolicy"] in {"OnFailure", "Never"}


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_kustomization_lists_exactly_the_manifests() -> None:
    (kustomization,) = load_docs(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "duplicate resources"
    present = {p.name for p in K8S.iterdir() if p.suffix in {".yaml", ".yml"}}
    assert set(resources) == present - NOT_IN_KUSTOMIZATION
    assert "secret.example.yaml" in present, "the example Secret documents the expected keys"


def test_every_k8s_container_has_requests_and_limits() -> None:
    containers = list(k8s_containers())
    assert len(containers) >= 7
    for where, container in containers:
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert (resources.get(bound) or {}).get(resource), f"{where}: {bound}.{resource}"


def test_k8s_workloads_are_the_expected_kinds_and_sizes() -> None:
    workloads = {
        k8s_invocation(c): (where, spec)
        for where, spec in pod_specs()
        for c in spec["containers"]
        if is_spotcheck_image(c["image"])
    }
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for _p, d in k8s_docs()}
    where, _ = workloads[("run", "verdicts")]
    assert where.startswith("Deployment/") and docs[where]["spec"]["replicas"] == 3
    where, _ = workloads[("run", "streams")]
    assert where.startswith("StatefulSet/")
    # The streams worker keeps SPOTCHECK_STATE_DIR on a volume claim of its own.
    claims = {t["metadata"]["name"] for t in docs[where]["spec"].get("volumeClaimTemplates", [])}
    (container,) = (c for c in docs[where]["spec"]["template"]["spec"]["containers"])
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    state_dir = _configmap_data()[ENV_PREFIX + "STATE_DIR"]
    assert mounts.get(state_dir) in claims


def test_k8s_api_probes() -> None:
    (api,) = (c for _w, c in k8s_containers() if k8s_invocation_or_none(c) == ("run", "api"))
    readiness = api["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"  # workers' health must not drain the API
    liveness = api["livenessProbe"]
    # /healthz fails while Kafka is down; restarting the API would not help.
    lenient = "tcpSocket" in liveness or liveness.get("failureThreshold", 3) >= 10
    assert lenient, "the API's liveness probe must not restart it for a broker outage"


def k8s_invocation_or_none(container: dict[str, Any]) -> tuple[str, ...] | None:
    return k8s_invocation(container) if is_spotcheck_image(container["image"]) else None


def test_kafka_does_not_create_topics_on_demand() -> None:
    kafka = compose_services()["kafka"]["environment"]
    assert str(kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    (statefulset,) = (
        d for _p, d in k8s_docs() if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "kafka"
    )
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert statefulset["spec"]["replicas"] == 3


# ---------------------------------------------------------------------------------------------
# Compose


def test_compose_workers_wait_for_migrate_and_topics() -> None:
    services = compose_spotcheck_services()
    by_role = {compose_invocation(svc): name for name, svc in services.items()}
    one_shot = {by_role[inv] for inv in ONE_SHOT}
    for inv in LONG_RUNNING:
        name = by_role[inv]
        depends = services[name].get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for setup in one_shot:
            condition = (depends.get(setup) or {}).get("condition")
            assert condition == "service_completed_successfully", f"{name} -> {setup}: {condition}"
    for name in one_shot:
        # A one-shot that restarts after exiting 0 never lets the workers start for good.
        assert services[name].get("restart", "no") in {"no", "on-failure"}, name


def test_compose_infrastructure() -> None:
    services = compose_services()
    assert str(services["postgres"]["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(_as_argv(services["postgres"]["healthcheck"]["test"]) or [])
    assert any(":" in v for v in services["postgres"]["volumes"])
    assert str(services["kafka"]["image"]).startswith("apache/kafka:")
    by_role = {compose_invocation(s): s for s in compose_spotcheck_services().values()}
    assert by_role[("run", "verdicts")]["deploy"]["replicas"] == 2
    assert any(str(p).endswith("8080") for p in by_role[("run", "api")]["ports"])
