"""The Docker files without a Docker engine: ``docker-compose config`` validates the compose file
and the Sentinel override (docker/compose.ha.yaml), and the Dockerfile, the entry scripts, the
README and the operator's guide are read side by side so they cannot drift apart (a role the
compose file names must have an executable entry script, the entry scripts start the celery
commands the README documents, the nodes' Sentinel addresses are Sentinel services, and so on)."""

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

from pacing.cluster.connection import sentinel_addresses
from pacing.settings import Settings, load_settings
from tests.support import unavailable

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
ENTRYPOINTS = DOCKER / "entrypoints"
COMPOSE_FILE = DOCKER / "compose.yaml"
COMPOSE_HA_FILE = DOCKER / "compose.ha.yaml"
HA_ENTRYPOINT = DOCKER / "redis" / "ha-entrypoint.sh"
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
#: what docker/compose.ha.yaml adds: the master is compose.yaml's `redis`
HA_SERVICES = {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
#: Options that differ between a host and a container on purpose: credentials come from
#: PACING_FLOWER_BASIC_AUTH in the image, and the container fixes its port and schedule path.
HOST_ONLY_OPTIONS = {"--basic-auth"}


def compose_config(*files: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f FILE… config`` (compose.yaml alone unless ``files`` are given)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        unavailable(
            "docker-compose is not installed; `apt-get install docker-compose` (.ci/run does)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACING_", "FLOWER_"))}
    file_options = [option for file in files or (COMPOSE_FILE,) for option in ("-f", str(file))]
    return subprocess.run(
        [binary, *file_options, "config"],
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


@pytest.fixture(scope="module")
def compose_ha() -> dict[str, Any]:
    """compose.yaml with the Sentinel override, as docker-compose merges them."""
    resolved = compose_config(
        COMPOSE_FILE, COMPOSE_HA_FILE, PACING_FLOWER_BASIC_AUTH="admin:change-me"
    )
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


# --- compose with Redis Sentinel (docker/compose.ha.yaml) -----------------------------------------


def redis_users(config: dict[str, Any]) -> set[str]:
    """The pacing services that wait for Redis, i.e. use it (migrate and demo-targets do not)."""
    return {
        name
        for name, service in config["services"].items()
        if service.get("image") == "agent-pacing:latest"
        and "redis" in service.get("depends_on", {})
    }


def settings_of(environment: dict[str, str | None]) -> Settings:
    """The settings a container with ``environment`` reads (PACING_* of this shell aside)."""
    with pytest.MonkeyPatch.context() as patch:
        for variable in [v for v in os.environ if v.startswith("PACING_")]:
            patch.delenv(variable)
        for variable, value in environment.items():
            if value is not None:
                patch.setenv(variable, value)
        return load_settings()


def test_the_ha_override_adds_a_replica_and_three_sentinels_to_every_role(
    compose_ha: dict[str, Any],
) -> None:
    assert set(compose_ha["services"]) == {"redis", "postgres"} | IMAGE_SERVICES | HA_SERVICES
    assert redis_users(compose_ha) == {"worker", "beat-a", "beat-b", "flower", "exporter"}


def test_every_process_that_uses_redis_finds_the_master_through_sentinel_services(
    compose_ha: dict[str, Any],
) -> None:
    services = compose_ha["services"]
    sentinels = {name for name, s in services.items() if s.get("command", [""])[0] == "sentinel"}
    assert sentinels == {"sentinel-1", "sentinel-2", "sentinel-3"}
    for name in redis_users(compose_ha):
        service = services[name]
        addresses = service["environment"]["PACING_REDIS_SENTINELS"].split(",")
        # every address is a Sentinel service on the port the entry script gives Sentinels
        assert {a.split(":")[0] for a in addresses} == sentinels, name
        assert {a.split(":")[1] for a in addresses} == {"26379"}, name
        # ... watching the master by the name the node asks for (the entry script's default)
        assert service["environment"]["PACING_REDIS_MASTER_NAME"] == "pacing", name
        # ... and the settings the node reads from its environment are valid and in Sentinel
        # mode (compose leaves a variable without a value out when the shell has none)
        settings = settings_of(service["environment"])
        assert settings.uses_sentinels, name
        assert {host for host, _ in sentinel_addresses(settings)} == sentinels, name
        # ... and the node starts once every Sentinel is healthy
        for sentinel in sentinels:
            assert service["depends_on"][sentinel]["condition"] == "service_healthy", name


def test_the_redis_servers_and_sentinels_run_the_ha_entry_script_with_their_own_volume(
    compose_ha: dict[str, Any],
) -> None:
    services = compose_ha["services"]
    data_volumes = []
    for name in {"redis"} | HA_SERVICES:
        service = services[name]
        assert service["image"].startswith("redis:7"), name
        assert service["entrypoint"] == ["/bin/sh", "/ha/ha-entrypoint.sh"], name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        # the script comes from the repository, read-only ...
        assert Path(mounts["/ha/ha-entrypoint.sh"]) == HA_ENTRYPOINT, name
        # ... and the configuration it writes (and the server rewrites) lives in a volume
        assert mounts["/data"] in compose_ha["volumes"], name
        data_volumes.append(mounts["/data"])
        # the others reach it by its service name, which it announces
        assert service["environment"]["ANNOUNCE_HOST"] == name
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], f"{name} has no health check"
    assert len(set(data_volumes)) == len(data_volumes)
    # redis starts as the master, redis-replica replicates it, the Sentinels watch it
    assert services["redis"]["command"] == ["server"]
    assert services["redis-replica"]["command"] == ["server", "redis"]
    for index in (1, 2, 3):
        sentinel = services[f"sentinel-{index}"]
        assert sentinel["command"] == ["sentinel", "redis"]
        assert "get-master-addr-by-name pacing" in sentinel["healthcheck"]["test"][-1]
        for server in ("redis", "redis-replica"):
            assert sentinel["depends_on"][server]["condition"] == "service_healthy"


def test_the_ha_entry_script_uses_the_timings_of_pacing_up_ha() -> None:
    from pacing.cli.redis_ha import SentinelTimings

    text = HA_ENTRYPOINT.read_text()
    timings = SentinelTimings()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -e\n" in text
    assert f"DOWN_AFTER_MILLISECONDS:-{timings.down_after_milliseconds}}}" in text
    assert f"FAILOVER_TIMEOUT_MILLISECONDS:-{timings.failover_timeout_milliseconds}}}" in text
    assert f"repl-ping-replica-period {timings.repl_ping_replica_period_seconds}\n" in text
    assert f"repl-timeout {timings.repl_timeout_seconds}\n" in text
    assert " $master_port 2\n" in text  # quorum 2 of 3
    assert subprocess.run(["sh", "-n", str(HA_ENTRYPOINT)], check=False).returncode == 0
    # it hands over to the image's entrypoint, which drops root
    assert entry_command(HA_ENTRYPOINT)[:2] == ["docker-entrypoint.sh", "redis-server"]


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
            for file in re.findall(r"-f (\S+\.ya?ml)\b", line):
                assert (REPO / file).is_file(), f"{document.name}: no {file}: {line}"
            for service in re.findall(r"--scale (\S+?)=\d+", line):
                assert service in compose["services"], f"{document.name}: {line}"
        # the command that brings the stack up sets what the compose file requires
        first_up = next(line for line in lines if " up " in line)
        for variable in required:
            assert re.search(rf"(^|\s){variable}=", first_up), f"{document.name}: {first_up}"
