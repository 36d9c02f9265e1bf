"""The deployment files: they parse, set only settings that exist, set what production needs,
and run commands the CLI has."""

from __future__ import annotations

import fnmatch
import os
import queue
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from services.cli import app
from services.core.db import upgrade_to_head
from services.settings import Settings
from tests.conftest import BACKENDS, scratch_postgres

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def _variable(name: str, field: FieldInfo) -> str:
    # A renamed setting's variable is its first alias; its old names are deprecated.
    alias = field.validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"RISKALERT_{name.upper()}"


KNOWN = {_variable(name, field) for name, field in Settings.model_fields.items()}
# What a PostgreSQL deployment with separate processes must say, whatever the defaults.
PRODUCTION = {
    "RISKALERT_DATABASE_URL": None,
    "RISKALERT_AUTO_MIGRATE": "false",
    "RISKALERT_INLINE_WORKER": "false",
}
REQUIRED = {_variable(n, f) for n, f in Settings.model_fields.items() if f.is_required()}


def k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [d for d in k8s() if d["kind"] in kinds]


def secret_example() -> dict[str, str]:
    """The keys of the Secret kustomize makes from secret.env, as its example shows them."""
    lines = (DEPLOY / "k8s" / "secret.env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def k8s_environment() -> dict[str, str]:
    """What every pod gets through the ConfigMap and the Secret."""
    [config] = of_kind("ConfigMap")
    return {**config["data"], **secret_example()}


def pods() -> dict[str, dict[str, Any]]:
    """The pod template of every Deployment and Job, by name."""
    return {d["metadata"]["name"]: d["spec"]["template"] for d in of_kind("Deployment", "Job")}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def riskalert_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image") == "riskalert:local"
    }


def substituted(value: Any) -> str:
    # Compose's ${NAME:-default}: the default; ${NAME:?error} (required): a value of one's own.
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "rak_a_key_of_ones_own", value)


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == files
    kinds = sorted({d["kind"] for d in k8s()} - {"Kustomization"})
    assert kinds == [
        "ConfigMap", "Deployment", "Job", "Namespace", "NetworkPolicy", "PodDisruptionBudget",
        "Service",
    ]  # fmt: skip
    assert len(of_kind("Deployment")) == 3


def test_the_manifests_set_only_settings_that_exist_and_all_production_needs() -> None:
    environment = k8s_environment()
    assert set(environment) <= KNOWN, set(environment) - KNOWN
    for name, value in PRODUCTION.items():
        assert name in environment
        assert value is None or environment[name] == value
    assert environment.keys() >= REQUIRED


def test_the_compose_file_sets_only_settings_that_exist_and_all_production_needs() -> None:
    for name, service in riskalert_services().items():
        environment = {k: substituted(v) for k, v in service["environment"].items()}
        assert set(environment) <= KNOWN, (name, set(environment) - KNOWN)
        for setting, value in PRODUCTION.items():
            assert setting in environment, (name, setting)
            assert value is None or environment[setting] == value
        assert environment.keys() >= REQUIRED


@pytest.mark.parametrize("source", ["k8s", "compose"])
def test_the_values_given_are_valid_settings(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "k8s":
        environments = [k8s_environment()]
    else:
        environments = [
            {k: substituted(v) for k, v in s["environment"].items()}
            for s in riskalert_services().values()
        ]
    for environment in environments:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.inline_worker is False
        assert settings.database_url.startswith("postgresql+psycopg://")


def test_every_pod_probes_its_health_runs_unprivileged_and_requests_resources() -> None:
    pods = [d["spec"]["template"]["spec"] for d in of_kind("Deployment") + of_kind("Job")]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    for deployment in of_kind("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {"readinessProbe", "livenessProbe"} <= container.keys(), deployment["metadata"]
    [service] = of_kind("Service")
    [api] = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "riskalert-api"]
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    probes = api["spec"]["template"]["spec"]["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_command_the_files_run_is_one_the_cli_has() -> None:
    commands = [c["args"] for pod in pods().values() for c in containers(pod)]
    commands += [s["command"] for s in riskalert_services().values()]
    commands += [
        probe["exec"]["command"][1:]
        for d in of_kind("Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for probe in (c["readinessProbe"], c["livenessProbe"])
        if "exec" in probe
    ]
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def test_the_image_builds_in_two_stages_and_runs_unprivileged_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    [user] = re.findall(r"^USER (\S+)", text, re.M)
    assert not user.startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert re.search(r'^ENTRYPOINT \["riskalert"\]', text, re.M)
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (DEPLOY.parent / copied).exists(), copied


# Pod Security "restricted", container by container (the pod's securityContext as a default).
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}


def test_every_pod_meets_the_restricted_pod_security_profile() -> None:
    for name, pod in pods().items():
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & spec.keys(), name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert all("emptyDir" in v for v in volumes.values()), name
        for container in containers(pod):
            where = (name, container["name"])
            context = {**spec["securityContext"], **container.get("securityContext", {})}
            for field, value in RESTRICTED.items():
                assert context.get(field) is value, (*where, field)
            assert context.get("runAsUser", 0) != 0, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not context.get("privileged", False), where
            # A read-only root: what must be written (temporary files, the uvicorn workers'
            # Prometheus directory from tempfile.mkdtemp) goes to an emptyDir on /tmp.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
    # Admission enforces it too, so a pod that would break it is refused.
    [namespace] = of_kind("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for rule in rules for p in rule.get("ports", [])}


def test_network_policies_deny_by_default_and_open_what_each_process_needs() -> None:
    policies = of_kind("NetworkPolicy")
    assert any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and "ingress" not in p["spec"] and "egress" not in p["spec"]
        for p in policies
    )  # fmt: skip

    def allowed(labels: dict[str, str], direction: str) -> set[tuple[str, int]]:
        return {
            port
            for p in policies
            if _selects(p, labels)
            for port in _ports(p["spec"].get(direction, []))
        }

    labels = {name: pod["metadata"]["labels"] for name, pod in pods().items()}
    for name, pod_labels in labels.items():
        # Every process reaches PostgreSQL and DNS.
        assert {("TCP", 5432), ("UDP", 53)} <= allowed(pod_labels, "egress"), name
    api = labels["riskalert-api"]
    assert allowed(api, "ingress") == {("TCP", 8000)}
    for worker in ("riskalert-worker-scoring", "riskalert-worker-alerts"):
        assert allowed(labels[worker], "ingress") == {("TCP", 9100)}, worker
    # Webhooks go to any public address; alert email to the SMTP relay.
    assert {("TCP", 443), ("TCP", 587)} <= allowed(labels["riskalert-worker-alerts"], "egress")
    [migrate] = [n for n in labels if n.startswith("riskalert-migrate")]
    assert allowed(labels[migrate], "ingress") == set()


def test_disruption_budgets_keep_an_api_pod_and_an_alerts_worker_running() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    budgets = {
        name: budget
        for budget in of_kind("PodDisruptionBudget")
        for name, deployment in deployments.items()
        if budget["spec"]["selector"] == deployment["spec"]["selector"]
    }
    assert set(budgets) == {"riskalert-api", "riskalert-worker-alerts"}
    for name, budget in budgets.items():
        assert 1 <= budget["spec"]["minAvailable"] < deployments[name]["spec"]["replicas"], name


def test_no_probe_starts_a_riskalert_process_and_workers_probe_their_healthz() -> None:
    for name, pod in pods().items():
        for container in containers(pod):
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert "exec" not in container.get(kind, {}), (name, container["name"], kind)
    for deployment in of_kind("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        if container["args"][0] == "worker":
            assert "metrics" in {p["name"] for p in container["ports"]}
            for kind in ("readinessProbe", "livenessProbe"):
                assert container[kind]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    for name, service in riskalert_services().items():
        test = " ".join(service.get("healthcheck", {}).get("test", []))
        assert "riskalert" not in test, name


def test_the_migrate_job_is_named_for_the_release_and_the_pods_wait_for_its_schema() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    [job] = of_kind("Job")
    # A Job's pod template is immutable: a new release's Job must be a new object.
    assert job["metadata"]["name"] == "riskalert-migrate-" + image["newTag"].replace(".", "-")
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    for deployment in of_kind("Deployment"):
        [wait] = deployment["spec"]["template"]["spec"]["initContainers"]
        assert wait["args"][:2] == ["check", "--wait"], deployment["metadata"]["name"]
        assert float(wait["args"][2]) > 0
        assert wait["envFrom"] == deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]


def test_no_example_admin_key_can_be_deployed() -> None:
    [api] = [s for s in riskalert_services().values() if s["command"][0] == "serve"]
    # Compose refuses to start without a key of one's own (no default to forget).
    assert re.fullmatch(
        r"\$\{RISKALERT_ADMIN_API_KEY:\?[^}]+\}", api["environment"]["RISKALERT_ADMIN_API_KEY"]
    )
    # Kubernetes: the Secret comes from secret.env, which the repository never holds.
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    [generator] = kustomization["secretGenerator"]
    assert generator["envs"] == ["secret.env"]
    assert not (DEPLOY / "k8s" / "secret.env").exists()
    assert "secret.env" in (DEPLOY / "k8s" / ".gitignore").read_text().split()
    assert secret_example()["RISKALERT_ADMIN_API_KEY"] == ""
    for path in [*DEPLOY.rglob("*.yaml"), *DEPLOY.glob("*.md"), DEPLOY / "k8s/secret.env.example"]:
        assert "change-me" not in path.read_text().lower(), path


def test_long_running_compose_services_restart_on_failure() -> None:
    for name, service in compose()["services"].items():
        expected = {"no"} if name == "migrate" else {"on-failure", "unless-stopped", "always"}
        assert service.get("restart") in expected, name


def test_the_image_installs_locked_versions_on_a_base_pinned_by_digest() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for base in re.findall(r"^FROM (\S+)", text, re.M):
        assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base
    assert re.search(r"pip wheel .*--requirement requirements\.lock", text)
    assert re.search(r"pip install .*--requirement /wheels/requirements\.lock", text)
    # Every runtime dependency is pinned, at a version its requirement allows.
    locked: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, version = line.split("==")
            locked[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in locked, name
        assert dependency.specifier.contains(locked[name], prereleases=True), name
    # Demo mode binds to loopback only: no command line here asks for it on 0.0.0.0.
    assert not re.search(r"--demo.*0\.0\.0\.0|0\.0\.0\.0.*--demo", text)


def test_the_build_context_leaves_out_local_state_but_not_what_the_image_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for local in (".git", ".venv", "riskalert.db", ".pytest_cache", "benchmarks", ".env"):
        assert any(fnmatch.fnmatch(local, pattern) for pattern in ignored), local
    text = (DEPLOY / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in copied.split():
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own with no migration applied."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with scratch_postgres("riskalert_deploy") as url:
        yield url


def test_check_with_wait_gives_up_on_a_schema_that_stays_behind(empty_url: str) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(app, ["check", "--wait", "1", "--database-url", empty_url])

    assert result.exit_code == 1, result.output
    assert time.monotonic() - started >= 1
    assert "waiting up to 1 s" in result.output
    assert "riskalert migrate" in result.output


@pytest.mark.slow
def test_check_with_wait_returns_once_the_migration_has_run(empty_url: str) -> None:
    # A real process, as the init container runs it; wide lines, so each message is one line.
    command = ["check", "--wait", "120", "--database-url", empty_url]
    waiting = subprocess.Popen(
        [sys.executable, "-c", "from services.cli import app; app()", *command],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "500"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output = waiting.stdout
    assert output is not None
    threading.Thread(target=lambda: [lines.put(line) for line in output], daemon=True).start()
    try:
        first = lines.get(timeout=60)
        assert first.startswith("waiting up to 120 s"), first
        assert waiting.poll() is None

        upgrade_to_head(empty_url)

        assert waiting.wait(timeout=60) == 0
        assert lines.get(timeout=10).startswith("database answers")
    finally:
        waiting.kill()
        waiting.wait()
