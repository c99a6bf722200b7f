"""The deployment files in docker/ agree with themselves and with Presso's settings.

No Docker engine runs here: these tests read the files. They check what breaks a deployment
silently: a store URL naming another user or database than the server creates, MLflow sharing
Optuna's database, a worker joining the wrong Ray port, images that disagree on Ray versions.
"""

import os
import re
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
TEST_ENV = {"RAY_AUTH_TOKEN": "test-token"}  # the one variable compose requires (``:?``)


def interpolate(value, env):
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``, applied to strings."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, value)


@pytest.fixture(scope="module")
def compose():
    return interpolate(yaml.safe_load((DOCKER / "compose.yaml").read_text()), TEST_ENV)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def env_of(service) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def flag(command: list[str], name: str) -> str | None:
    for part in command:
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
    return None


def url(text: str):
    from sqlalchemy.engine import make_url

    return make_url(text)


def published(service) -> dict[int, str]:
    """container port -> the host binding as written."""
    ports = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        ports[int(parts[-1])] = ":".join(parts[:-1])
    return ports


def test_the_services_are_there(services):
    assert {"postgres", "mlflow", "ray-head", "ray-gpu-worker"} <= set(services)
    assert not {"RAY_AUTH_TOKEN"} - set(env_of(services["ray-head"])), "Ray token auth is configured"
    with pytest.raises(KeyError, match="RAY_AUTH_TOKEN"):
        interpolate(yaml.safe_load((DOCKER / "compose.yaml").read_text()), {})


def test_the_driver_store_is_the_postgres_service(services):
    pg = env_of(services["postgres"])
    store = url(env_of(services["ray-head"])["PRESSO_STORAGE"])
    assert store.drivername == "postgresql+psycopg"  # psycopg 3, installed by presso[postgres]
    assert store.host == "postgres" and store.port == 5432 and 5432 in published(services["postgres"])
    assert store.username == pg["POSTGRES_USER"] and store.password == pg["POSTGRES_PASSWORD"]
    assert store.database == pg["POSTGRES_DB"] == "optuna"
    health = " ".join(services["postgres"]["healthcheck"]["test"])
    assert f"-U {pg['POSTGRES_USER']}" in health and f"-d {pg['POSTGRES_DB']}" in health


def test_mlflow_keeps_its_runs_in_its_own_postgres_database_and_artifacts_on_a_volume(compose, services):
    pg = env_of(services["postgres"])
    command = command_of(services["mlflow"])
    backend = url(flag(command, "--backend-store-uri"))
    assert backend.host == "postgres" and backend.port == 5432
    assert backend.username == pg["POSTGRES_USER"] and backend.password == pg["POSTGRES_PASSWORD"]
    # NOTE: Optuna and MLflow each keep an alembic_version table: never the same database.
    assert backend.database == "mlflow" != pg["POSTGRES_DB"]
    init = [v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init, "the mlflow database must be created by an init script"
    script = (DOCKER / init[0].split(":")[0]).read_text()
    assert re.search(rf"CREATE DATABASE {backend.database} OWNER {pg['POSTGRES_USER']}", script)
    destination = flag(command, "--artifacts-destination")
    assert "--serve-artifacts" in command
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["mlflow"]["volumes"]}
    assert destination in mounts and mounts[destination] in compose["volumes"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_tracking_uri_reaches_mlflow(services):
    tracking = env_of(services["ray-head"])["MLFLOW_TRACKING_URI"]
    match = re.fullmatch(r"http://([\w.-]+):(\d+)", tracking)
    host, port = match.group(1), int(match.group(2))
    command = command_of(services["mlflow"])
    assert host == "mlflow" and port == int(flag(command, "--port")) and port in published(services["mlflow"])
    assert flag(command, "--host") == "0.0.0.0"
    allowed = flag(command, "--allowed-hosts").split(",")
    assert f"{host}:{port}" in allowed, "MLflow 3 rejects requests whose Host header it does not allow"


def test_ray_workers_join_the_head_with_the_same_secret(services):
    head, worker = services["ray-head"], services["ray-gpu-worker"]
    head_command, worker_command = command_of(head), command_of(worker)
    assert "--head" in head_command and "--block" in head_command and "--block" in worker_command
    assert flag(worker_command, "--address") == f"ray-head:{flag(head_command, '--port')}"
    assert flag(head_command, "--num-gpus") == "0", "the head runs the driver, GPUs are for trials"
    for service in (head, worker):
        env = env_of(service)
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == TEST_ENV["RAY_AUTH_TOKEN"]
        assert service["image"] == services["mlflow"]["image"], "one image: same Ray, Python and Presso"
        assert service.get("shm_size"), "Ray's object store needs a large /dev/shm"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert published(head).get(8265), "the Ray dashboard"


def test_every_named_volume_is_declared(compose, services):
    used = set()
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used <= set(compose["volumes"]), used - set(compose["volumes"])
    assert any(v.startswith("./studies:/studies") for v in services["ray-head"]["volumes"])


def test_the_example_study_runs_on_this_cluster(services):
    from presso.search import study_from_dict

    data = yaml.safe_load((DOCKER / "studies" / "smollm2-ray.yaml").read_text())
    config = study_from_dict(data, base_dir=str(DOCKER / "studies"))
    head = env_of(services["ray-head"])
    written, passed = url(config.storage), url(head["PRESSO_STORAGE"])
    # Same server, user and database; only the password comes from docker/.env at run time.
    assert (written.drivername, written.host, written.port, written.username, written.database) == \
        (passed.drivername, passed.host, passed.port, passed.username, passed.database)
    assert config.tracking_uri == head["MLFLOW_TRACKING_URI"]
    assert config.backend == "ray" and config.ray_address == "auto"
    assert 0 < config.resources.gpus <= 1 and config.max_concurrent >= 1
    assert config.grace_s > config.heartbeat_s


def test_the_image_installs_torch_first_and_pins_ray():
    import ray

    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    lines = text.splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "download.pytorch.org/whl/${TORCH_VARIANT}" in line)
    presso_line = next(i for i, line in enumerate(lines) if 'pip install ".[postgres]"' in line)
    assert torch_line < presso_line, "torch first, so presso does not pull the default CUDA build"
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1)
    assert ray_version == ray.__version__, "the image's Ray is the one Presso is tested with"
    cluster = yaml.safe_load((DOCKER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == ray_version
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["x-presso-image"]["build"]["dockerfile"] == "docker/Dockerfile"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_the_kuberay_cluster_has_gpu_workers_and_token_auth():
    cluster = yaml.safe_load((DOCKER / "kuberay" / "raycluster.yaml").read_text())
    head = cluster["spec"]["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    assert head["rayStartParams"]["num-gpus"] == "0"
    for group in cluster["spec"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"]
        assert container["image"] == head_container["image"]
        names = {e["name"]: e for e in container["env"]}
        assert names["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in names["RAY_AUTH_TOKEN"]["valueFrom"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265


def test_the_readme_commands_use_these_files():
    readme = (DOCKER / "README.md").read_text()
    assert "## Run on a GPU cluster" in readme
    for needle in ("docker/compose.yaml", "docker/.env", "/studies/smollm2-ray.yaml", "--storage \"$PRESSO_STORAGE\"",
                   "kuberay/raycluster.yaml", "TORCH_VARIANT=cu128"):
        assert needle in readme, needle
    assert os.path.exists(DOCKER / ".env.example")
