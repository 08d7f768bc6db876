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
