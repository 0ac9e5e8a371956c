"""The Docker files without a Docker engine: ``docker-compose config`` validates the compose file,
and the Dockerfile, the entry scripts, the README and the operator's guide are read side by side
so they cannot drift apart (a role the compose file names must have an executable entry script,
the entry scripts start the celery commands the README documents, and so on)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import unavailable

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
ENTRYPOINTS = DOCKER / "entrypoints"
COMPOSE_FILE = DOCKER / "compose.yaml"
README = REPO / "README.md"
OPERATORS_GUIDE = REPO / "docs" / "operators.md"
IMAGE_SERVICES = {
    "migrate",
    "simulator",
    "demo-targets",
    "worker",
    "beat-a",
    "beat-b",
    "flower",
    "exporter",
}
#: Options that differ between a host and a container on purpose: credentials come from
#: PACING_FLOWER_BASIC_AUTH in the image, and the container fixes its port and schedule path.
HOST_ONLY_OPTIONS = {"--basic-auth"}


def compose_config(**variables: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        unavailable(
            "docker-compose is not installed; `apt-get install docker-compose` (.ci/run does)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACING_", "FLOWER_"))}
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "config"],
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, variables set)."""
    resolved = compose_config(PACING_FLOWER_BASIC_AUTH="admin:change-me")
    assert resolved.returncode == 0, resolved.stderr
    config = yaml.safe_load(resolved.stdout)
    assert isinstance(config, dict)
    return config


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, ``(INSTRUCTION, arguments)``, grouped by stage."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def entry_command(script: Path) -> list[str]:
    """The words of the script's last line, which must be its ``exec``."""
    last = script.read_text().strip().splitlines()[-1]
    assert last.startswith("exec "), f"{script.name} must end by exec-ing its process: {last}"
    return shlex.split(last)[1:]


def container_port(port: str | dict[str, Any]) -> int:
    """The container side of a published port, short ("127.0.0.1:5555:5555/tcp") or long form."""
    if isinstance(port, dict):
        return int(port["target"])
    return int(port.rsplit(":", 1)[-1].split("/")[0])


def options(words: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in words if word.startswith("--")}


def documented_celery_commands(path: Path) -> dict[str, list[str]]:
    """``{role: words}`` of the ``celery -A tasks ROLE …`` lines of a document's shell blocks."""
    commands: dict[str, list[str]] = {}
    for found in re.finditer(r"celery -A tasks (worker|beat|flower)\b[^\n#&`|]*", path.read_text()):
        commands.setdefault(found[1], shlex.split(found[0]))
    return commands


# --- compose ----------------------------------------------------------------------------------


def test_docker_compose_accepts_the_compose_file_and_it_has_every_role(
    compose: dict[str, Any],
) -> None:
    assert set(compose["services"]) == {"redis", "postgres"} | IMAGE_SERVICES


def test_compose_refuses_to_start_flower_without_credentials() -> None:
    # when: the variable for Flower's basic auth is not set
    resolved = compose_config()

    # then
    assert resolved.returncode != 0
    assert "set PACING_FLOWER_BASIC_AUTH=user:password" in resolved.stderr


def test_every_role_runs_the_one_image_with_an_executable_entry_script(
    compose: dict[str, Any],
) -> None:
    for name in IMAGE_SERVICES:
        service = compose["services"][name]
        # one image for every role, built from docker/Dockerfile
        assert service["image"] == "agent-pacing:latest", name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
        # ... the role is its entry script, which exists and is executable
        script = ENTRYPOINTS / service["command"][0]
        assert script.is_file(), f"{name}: no entry script {script}"
        assert os.access(script, os.X_OK), f"{script} is not executable"
        # ... and the working directory stays the image's, where migrations/ is
        assert "working_dir" not in service, name


def test_workers_scale_and_two_beat_nodes_have_their_own_node_names(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    worker = services["worker"]
    # --scale needs a service without a fixed container name or host port
    assert "container_name" not in worker
    assert "ports" not in worker
    nodes = {services[name]["environment"]["PACING_NODE_NAME"] for name in ("beat-a", "beat-b")}
    assert nodes == {"node-a", "node-b"}
    for name in ("beat-a", "beat-b"):
        assert services[name]["command"] == ["pacing-beat"]


def test_long_running_services_have_health_checks_and_wait_for_their_dependencies(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    one_shot = {"migrate", "demo-targets"}
    for name, service in services.items():
        if name in one_shot:
            assert service["restart"] == "no", name
            continue
        assert service["healthcheck"]["test"], f"{name} has no health check"
        assert service["restart"] == "unless-stopped", name
    for name in ("worker", "beat-a", "beat-b"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    # the migration runs once the database answers
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_exporter_and_flower_listen_on_the_ports_the_image_exposes(
    compose: dict[str, Any],
) -> None:
    exposed = {
        int(port)
        for instruction, arguments in dockerfile_stages()[-1]
        if instruction == "EXPOSE"
        for port in arguments.split()
    }
    published = {
        container_port(port)
        for service in compose["services"].values()
        if service.get("image") == "agent-pacing:latest"
        for port in service.get("ports", [])
    }
    assert published == exposed == {5555, 8700, 9808}
    assert entry_command(ENTRYPOINTS / "pacing-exporter")[:2] == ["pacing", "exporter"]
    assert "--port=9808" in entry_command(ENTRYPOINTS / "pacing-exporter")
    assert "--port=5555" in entry_command(ENTRYPOINTS / "pacing-flower")


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    users = [arguments for instruction, arguments in runtime if instruction == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    # the runtime stage takes the installed environment from the build stage, no compiler
    assert any(
        instruction == "COPY" and arguments.startswith("--from=")
        for instruction, arguments in runtime
    )


def test_dockerfile_copies_what_the_roles_look_for_in_the_working_directory() -> None:
    runtime = dockerfile_stages()[-1]
    workdirs = [arguments for instruction, arguments in runtime if instruction == "WORKDIR"]
    assert workdirs == ["/app"]
    copies = [arguments.split() for instruction, arguments in runtime if instruction == "COPY"]
    # pacing/history/migrate.py finds ./migrations when the package is installed, not checked out
    assert ["migrations", "./migrations"] in copies
    # the entry scripts land on the PATH
    assert ["docker/entrypoints/", "/usr/local/bin/"] in copies
    cmd = [arguments for instruction, arguments in runtime if instruction == "CMD"]
    assert cmd == ['["pacing-worker"]']


def test_every_file_the_dockerfile_copies_exists_and_is_not_docker_ignored() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in dockerfile_stages():
        for instruction, arguments in stage:
            if instruction != "COPY" or arguments.startswith("--from="):
                continue
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
                assert source.rstrip("/").split("/")[0] not in ignored, source
    assert ".venv" in ignored


# --- entry scripts, README and the operator's guide ----------------------------------------------


def test_every_entry_script_is_a_small_shell_script_that_execs_its_process() -> None:
    scripts = sorted(ENTRYPOINTS.iterdir())
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n"), script.name
        assert "\nset -e\n" in text, script.name
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert entry_command(script)[0] in {"celery", "pacing", "python"}, script.name


@pytest.mark.parametrize("role", ["worker", "beat", "flower"])
def test_entry_scripts_start_the_celery_commands_the_docs_give(role: str) -> None:
    script = entry_command(ENTRYPOINTS / f"pacing-{role}")
    assert script[:4] == ["celery", "-A", "tasks", role]
    for document in (README, OPERATORS_GUIDE):
        documented = documented_celery_commands(document).get(role)
        assert documented is not None, f"{document.name} gives no `celery -A tasks {role}`"
        # the options of the documented command are the container's (container-only ones aside)
        missing = options(documented) - HOST_ONLY_OPTIONS - options(script)
        assert not missing, f"pacing-{role} lacks {missing} of {document.name}: {documented}"


def test_the_documented_docker_commands_use_the_compose_file_its_services_and_variables(
    compose: dict[str, Any],
) -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    assert required == {"PACING_FLOWER_BASIC_AUTH"}
    for document in (README, OPERATORS_GUIDE):
        lines = re.findall(r"^.*docker compose [^\n]*$", document.read_text(), flags=re.M)
        assert lines, f"{document.name} shows no docker compose command"
        for line in lines:
            assert "-f docker/compose.yaml" in line, f"{document.name}: {line}"
            for service in re.findall(r"--scale (\S+?)=\d+", line):
                assert service in compose["services"], f"{document.name}: {line}"
        # the command that brings the stack up sets what the compose file requires
        first_up = next(line for line in lines if " up " in line)
        for variable in required:
            assert re.search(rf"(^|\s){variable}=", first_up), f"{document.name}: {first_up}"
