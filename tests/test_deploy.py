"""The deployment files: they parse, set only settings that exist, set what production needs,
and run commands the CLI has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
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


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s() if d["kind"] == kind]


def k8s_environment() -> dict[str, str]:
    """What every pod gets through the ConfigMap and the Secret."""
    [config] = of_kind("ConfigMap")
    [secret] = of_kind("Secret")
    return {**config["data"], **secret["stringData"]}


def riskalert_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image") == "riskalert:local"
    }


def substituted(value: Any) -> str:
    # Compose's ${NAME:-default}: the default.
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    listed = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == files
    kinds = sorted(d["kind"] for d in k8s() if d["kind"] != "Kustomization")
    assert kinds == [
        "ConfigMap", "Deployment", "Deployment", "Deployment", "Job", "Namespace", "Secret",
        "Service",
    ]  # fmt: skip


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
    commands = [
        c["args"]
        for d in of_kind("Deployment") + of_kind("Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
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
