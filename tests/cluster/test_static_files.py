"""What can be checked here of the files that only run on a real cluster: syntax, references, pinned versions."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.tracking.yml"
KUBERAY = REPO / "ray_jobs" / "cluster" / "kuberay-raycluster.yaml"
LAUNCHER = REPO / "ray_jobs" / "cluster" / "local-machines.yaml"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(m[0].upper(), m[1].strip()) for m in re.findall(r"^\s*([A-Za-z]+)\s+(.*)$", text, flags=re.M)]


def _dockerignored(rel: str) -> bool:
    """True if a top-level path is excluded by .dockerignore (enough for the plain patterns used there)."""
    patterns = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    return any(Path(rel).match(p.removeprefix("**/")) for p in patterns)


@pytest.mark.parametrize("path", [COMPOSE, KUBERAY, LAUNCHER], ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    assert all(doc is not None for doc in yaml.safe_load_all(path.read_text()))


def test_dockerfile_is_multi_stage_and_copies_existing_sources() -> None:
    """Builder has the CUDA devel image, the runtime the matching runtime image; COPY sources exist in the context."""
    steps = _instructions(DOCKERFILE)
    froms = [args for key, args in steps if key == "FROM"]
    assert [f.split()[-1] for f in froms] == ["builder", "runtime"]
    assert "-devel-" in froms[0] and "-runtime-" in froms[1]
    args = dict(a.split("=", 1) for key, a in steps if key == "ARG" and "=" in a)
    cuda_mm = "".join(args["CUDA_VERSION"].split(".")[:2])
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith(f"/cu{cuda_mm}"), "nvcc and torch must share CUDA major.minor"
    for key, a in steps:
        if key == "COPY" and "--from=" not in a:
            *sources, _dest = shlex.split(a)
            for src in sources:
                assert (REPO / src).exists() and not _dockerignored(src), f"COPY {src}: not in the build context"
    last_from = max(i for i, (key, _) in enumerate(steps) if key == "FROM")
    runtime = "\n".join(a for _, a in steps[last_from:])
    assert not re.search(r"build-essential|\bgcc\b|-devel-", runtime), "compiler toolchain in the final image"
    for needed in ("pyproject.toml", "mmseg_configs", "benchmark", "ray_jobs", "analysis"):
        assert (REPO / needed).exists() and not _dockerignored(needed), needed


def test_dockerfile_pins_match_pyproject() -> None:
    """The image installs the torch and mmcv versions the project pins, so CPU and GPU nodes run the same code."""
    text = DOCKERFILE.read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", text)[1]
    assert f'"torch=={torch}"' in pyproject
    assert '"mmcv==2.1.0"' in pyproject and "mmcv==2.1.0" in text
    assert re.search(r'ARG TORCH_CUDA_ARCH_LIST="7\.0;8\.0;9\.0"', text), "V100, A100 and H100 kernels"


def test_compose_services_and_files() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow"} <= services.keys()
    for name, svc in services.items():
        if "env_file" in svc:
            assert (COMPOSE.parent / "tracking.env.example").exists(), name
        if "build" in svc:
            assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).exists(), name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    for name in ("postgres", "minio", "mlflow"):
        assert "healthcheck" in services[name] or name == "mlflow", name
    assert "HEALTHCHECK" in (COMPOSE.parent / "mlflow.Dockerfile").read_text()
    command = " ".join(services["mlflow"]["command"])
    assert "postgresql+psycopg2://" in command and "--artifacts-destination=s3://" in command
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert named <= set(compose["volumes"])
    env_keys = {l.split("=")[0] for l in (COMPOSE.parent / "tracking.env.example").read_text().splitlines() if "=" in l and not l.startswith("#")}
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text())) | set(re.findall(r"\$\$(\w+)", COMPOSE.read_text()))
    assert used <= env_keys, f"variables missing from tracking.env.example: {used - env_keys}"


_SECRET = re.compile(r"PASSWORD|SECRET|MC_HOST_")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Docker Compose variable interpolation (${V}, ${V:-d}, ${V-d}, ${V:?e}, ${V?e}, $$); ValueError where ? fails."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise ValueError(f"{name}: {arg}")
        return value or ""
    pattern = r"(?<!\$)\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    return re.sub(pattern, one, text).replace("$$", "$")


def _example_env() -> dict[str, str]:
    lines = (COMPOSE.parent / "tracking.env.example").read_text().splitlines()
    return dict(l.split("=", 1) for l in lines if "=" in l and not l.lstrip().startswith("#"))


def _published(env: dict[str, str]) -> list[tuple[str, str]]:
    """(service, host address) of every published port, after interpolation with `env`."""
    out = []
    for name, svc in yaml.safe_load(COMPOSE.read_text())["services"].items():
        assert svc.get("network_mode") != "host", f"{name}: host networking publishes every port"
        for port in svc.get("ports", []):
            if isinstance(port, dict):  # long syntax
                out.append((name, _interpolate(str(port.get("host_ip", "")), env)))
                continue
            parts = _interpolate(str(port), env).split(":")
            out.append((name, parts[0] if len(parts) == 3 else ""))  # HOST:PUBLISHED:TARGET, else all interfaces
    return out


def test_compose_publishes_ports_on_loopback_unless_an_address_is_named() -> None:
    """Every published port names a host address: 127.0.0.1 by default, the operator's SEGLEAK_BIND if set."""
    published = _published({})
    assert published and {addr for _, addr in published} == {"127.0.0.1"}, published
    chosen = _published({"SEGLEAK_BIND": "10.0.0.5"})
    assert dict(chosen)["mlflow"] == "10.0.0.5"
    assert {addr for name, addr in chosen if name == "minio"} == {"10.0.0.5", "127.0.0.1"}  # the console stays local
    example = _example_env()
    assert example.get("SEGLEAK_BIND") == "127.0.0.1" and {a for _, a in _published(example)} == {"127.0.0.1"}


def test_compose_refuses_to_start_without_passwords() -> None:
    """Every secret comes from ${VAR:?message}; the example ships no placeholder password that would pass."""
    text = COMPOSE.read_text()
    compose = yaml.safe_load(text)
    references = re.findall(r"(?<!\$)\$\{(\w+)([^}]*)\}", text)
    secret_refs = [(name, rest) for name, rest in references if _SECRET.search(name)]
    assert secret_refs, "no password in the compose file at all?"
    for name, rest in secret_refs:
        assert rest.startswith(":?") and len(rest) > 2, f"${{{name}{rest}}}: a password must be ${{{name}:?message}}"
    for name, svc in compose["services"].items():
        assert "env_file" not in svc, f"{name}: env_file hands every secret to every container; list what it needs"
        for key, value in (svc.get("environment") or {}).items():
            if _SECRET.search(key):
                assert re.search(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}.{key} = {value!r}"
    example = _example_env()
    secrets = {k: v for k, v in example.items() if _SECRET.search(k)}
    assert secrets and all(v.strip() == "" for v in secrets.values()), f"placeholder passwords in the example: {secrets}"
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD|MINIO_ROOT_PASSWORD"):
        _interpolate(text, example)  # copied without editing: compose stops with the message
    filled = {**example, "POSTGRES_PASSWORD": "a" * 32, "MINIO_ROOT_PASSWORD": "b" * 32}
    assert "a" * 32 in _interpolate(text, filled)


def test_compose_keeps_passwords_off_command_lines() -> None:
    """No command, entrypoint or healthcheck carries a password (the host's `ps` shows every process's argv)."""
    filled = {**_example_env(), "POSTGRES_PASSWORD": "pg-secret-value", "MINIO_ROOT_PASSWORD": "minio-secret-value"}
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, svc in compose["services"].items():
        for field in ("command", "entrypoint"):
            value = svc.get(field) or []
            argv = " ".join(value) if isinstance(value, list) else str(value)
            argv += " " + " ".join(map(str, (svc.get("healthcheck") or {}).get("test", [])))
            assert not re.search(r"\$\{?\$?\{?\w*(PASSWORD|SECRET)", argv), f"{name}.{field} names a secret: {argv}"
            expanded = _interpolate(argv, filled)
            assert "secret-value" not in expanded, f"{name}.{field}: {expanded}"
            assert not re.search(r"://[^\s/@:]+:[^\s/@]+@", expanded), f"{name}.{field} has credentials in a URI"
    mlflow_cmd = _interpolate(" ".join(compose["services"]["mlflow"]["command"]), filled)
    assert "--backend-store-uri=postgresql+psycopg2://mlflow@postgres:5432/mlflow" in mlflow_cmd
    assert "PGPASSWORD" in compose["services"]["mlflow"]["environment"]  # libpq's own variable


def _host_patterns(value: str) -> list[str]:
    return [h.strip() for h in value.split(",") if h.strip()]


def test_allowed_hosts_are_names_not_wildcards() -> None:
    """MLFLOW_ALLOWED_HOSTS (example and default) lists hosts; only a port may be a wildcard."""
    default = re.search(r"--allowed-hosts=\$\{MLFLOW_ALLOWED_HOSTS:-([^}]*)\}", COMPOSE.read_text())
    assert default, "the compose file should default MLFLOW_ALLOWED_HOSTS to loopback names"
    example = _example_env()["MLFLOW_ALLOWED_HOSTS"]
    commented = re.findall(r"#\s*MLFLOW_ALLOWED_HOSTS=(\S+)", (COMPOSE.parent / "tracking.env.example").read_text())
    for value in (default[1], example, *commented):
        for pattern in _host_patterns(value):
            host = pattern.rsplit(":", 1)[0] if re.search(r":(\d+|\*)$", pattern) else pattern
            assert "*" not in host and "?" not in host, f"{pattern!r} in {value!r}: a wildcard over hosts"
    assert set(_host_patterns(example)) <= {"localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"}


def test_kuberay_manifest() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(KUBERAY.read_text())}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["spec"]["rayVersion"].startswith("2.60")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    workers = cluster["spec"]["workerGroupSpecs"]
    gpu_group = next(g for g in workers if g["groupName"] == "gpu-workers")["template"]["spec"]
    claims = {docs["PersistentVolumeClaim"]["metadata"]["name"]}
    for pod in (head, gpu_group):
        container = pod["containers"][0]
        assert container["image"].endswith("segleak:gpu")
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http") and "RAY_AUTH_MODE" in env
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/results", "/data", "/dev/shm"} <= mounts
        results = next(v for v in pod["volumes"] if v["name"] == "results")
        assert results["persistentVolumeClaim"]["claimName"] in claims
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    limits = gpu_group["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_launcher_config() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    assert config["provider"]["type"] == "local"
    assert config["min_workers"] == config["max_workers"] == len(config["provider"]["worker_ips"])
    assert config["docker"]["image"].endswith("segleak:gpu")
    options = " ".join(config["docker"]["run_options"])
    assert "--gpus all" in options and ":/results" in options
    assert any("--head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize("requirement", ["mmcv==2.1.0", "mmengine==0.10.7", "mmsegmentation==1.2.2", "mlflow==3.17.2",
                                         "psycopg2-binary==2.9.11", "boto3==1.43.11", "ray==2.60.0"])
def test_pypi_pins_resolve(requirement: str) -> None:
    """The versions the images pin exist on the package index (skipped when the index cannot be reached)."""
    name, version = requirement.split("==")
    done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and re.search(r"NewConnectionError|unreachable|timed out|ProxyError|Temporary failure", done.stderr):
        pytest.skip(f"package index unreachable: {done.stderr.strip().splitlines()[-1]}")
    available = re.search(r"Available versions: (.*)", done.stdout)
    assert available, done.stdout + done.stderr
    assert version in available[1].split(", "), f"{requirement} not on the index"
