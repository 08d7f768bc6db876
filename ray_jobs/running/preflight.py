"""Refusals before a run commits to anything: each check ends in one SegleakError line naming the key, file
or address at fault, instead of a hang, a 4-minute retry loop or one failed unit per bad file.

- `check_tracking`: the tracking server (or database) answers within seconds, before data or splits are
  written.
- `check_resources`: every stage the plan runs fits on one node of the Ray cluster (a `gpu: 1` request on a
  machine without a GPU would wait forever: Ray queues a task no node can take without a word).
- `check_images`: the images the plan reads decode, pair up, and hold labels in the adapter's label space
  (`segleak data check`'s logic, on exactly those files), before anything trains.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benchmark.data.adapters import get_adapter
from benchmark.data.check import CheckReport, check_pairs
from benchmark.data.roots import local_data_root
from benchmark.errors import SegleakError
from benchmark.failure import first_line
from benchmark.redact import redact
from ray_jobs.recording.store import ResultStore, temp_name
from ray_jobs.units import UNIT_KINDS
from ray_jobs.units.base import Plan

TRACKING_TIMEOUT_S = 5.0
DATABASE_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
RAY_NAMES = {"cpu": "CPU", "gpu": "GPU"}
CHECKED = "checked-images.json"  # in the store's data folder: pairs already found intact, by size and mtime


# ---------------------------------------------------------------------------------------------------------
# tracking

def _writable_place(path: Path) -> str | None:
    """Why a SQLite file cannot be created or written at `path`; None if it can."""
    if path.exists():
        return None if path.is_file() and os.access(path, os.R_OK | os.W_OK) else "it is not a writable file"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not a writable folder"
    return None


def check_tracking(uri: str, timeout_s: float | None = None) -> None:
    """Refuse a tracking store that cannot answer within `timeout_s` (default $SEGLEAK_TRACKING_TIMEOUT_S or
    5 s): a server's /health, a database's port, a SQLite file's folder. Other schemes are left to MLflow."""
    timeout = float(timeout_s or os.environ.get("SEGLEAK_TRACKING_TIMEOUT_S") or TRACKING_TIMEOUT_S)
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    shown = redact(uri)
    if scheme == "sqlite":
        reason = _writable_place(Path(uri.removeprefix("sqlite:///")).expanduser())
        if reason:
            raise SegleakError(f"MLflow tracking store {shown}: {reason}")
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SegleakError(f"MLflow tracking URI {shown}: {exc}") from None
    if not host:
        return
    if scheme in ("http", "https"):
        netloc = f"[{host}]" if ":" in host else host
        health = urlunsplit((scheme, netloc + (f":{port}" if port else ""), parts.path.rstrip("/") + "/health", "", ""))
        try:
            with urllib.request.urlopen(health, timeout=timeout):
                return
        except urllib.error.HTTPError as exc:  # it answered; only a server error says it cannot work
            if exc.code < 500:
                return
            reason = f"it answers {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            reason = f"no answer ({first_line(str(getattr(exc, 'reason', exc)))}; waited up to {timeout:g} s)"
        raise SegleakError(f"MLflow tracking server {shown} is not usable: {reason}; start it, or pass another "
                           "--tracking-uri (nothing was written)")
    if scheme in DATABASE_PORTS:
        try:
            socket.create_connection((host, port or DATABASE_PORTS[scheme]), timeout=timeout).close()
        except OSError as exc:
            detail = first_line(str(exc)) or type(exc).__name__
            raise SegleakError(f"MLflow tracking database {shown} is not reachable ({detail}; waited up to "
                               f"{timeout:g} s); nothing was written") from None


# ---------------------------------------------------------------------------------------------------------
# resources

def _stages(plan: Plan) -> list[str]:
    return sorted({UNIT_KINDS.lookup(kind).stage for kind in {u.kind for u in plan.units.values()}})


def local_capacity(max_concurrent: int | None) -> dict[str, float]:
    """What the local Ray instance `init_ray` starts will offer: its CPUs and this machine's GPUs."""
    import torch

    return {"CPU": float(max_concurrent or os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def cluster_capacity() -> dict[str, float]:
    """The most of each resource one live node of the connected Ray cluster offers (a unit runs on one node)."""
    import ray

    best: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for name, amount in node.get("Resources", {}).items():
                best[name] = max(best.get(name, 0.0), float(amount))
    return best


def check_resources(plan: Plan, resources: dict[str, dict[str, float]], capacity: dict[str, float], where: str) -> None:
    """Refuse a stage the plan runs whose request no node can ever satisfy (Ray would queue it forever)."""
    for stage in _stages(plan):
        for name, ray_name in RAY_NAMES.items():
            wanted, offered = float(resources[stage][name]), capacity.get(ray_name, 0.0)
            if wanted > offered:
                raise SegleakError(
                    f"grid resources.{stage}.{name}: {wanted:g} per unit, but {where} offers at most {offered:g} "
                    f"{ray_name}{'s' if offered != 1 else ''} per node; lower it in the grid"
                    + (" or raise --max-concurrent" if name == "cpu" and "local" in where else ""))


# ---------------------------------------------------------------------------------------------------------
# images

def _images(plan: Plan) -> dict[tuple[str, str], set[str]]:
    """(root, adapter spec as JSON) -> every image id some unit of the plan reads there."""
    wanted: dict[tuple[str, str], set[str]] = {}
    kinds = {name: UNIT_KINDS.lookup(name)() for name in {u.kind for u in plan.units.values()}}
    for unit in plan.units.values():
        for root, spec, ids in kinds[unit.kind].images(unit.config):
            wanted.setdefault((root, json.dumps(spec, sort_keys=True)), set()).update(ids)
    return wanted


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _load(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def check_images(plan: Plan, store: ResultStore) -> int:
    """Decode every image and label the plan reads (about 10 ms a pair; pairs found intact before, with the
    same size and mtime, are skipped) and refuse the first dataset with a problem, naming a file. Returns how
    many pairs were decoded."""
    cache_path = store.data_dir / CHECKED
    cache = _load(cache_path)
    decoded = 0
    for (root, spec_json), ids in sorted(_images(plan).items()):
        spec = json.loads(spec_json)
        adapter = get_adapter(spec)
        local = local_data_root(root, store.data_dir)
        samples = {s.id: s for s in adapter.list_samples(local)}
        missing = sorted(ids - samples.keys())
        if missing:
            raise SegleakError(f"dataset {spec['type']} at {local}: image {missing[0]!r} of the plan has no "
                               f"image/label pair{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
        seen = cache.setdefault(spec_json, {})
        todo = []
        for image_id in sorted(ids):
            sample = samples[image_id]
            stamp = [*_stat(sample.image), *_stat(sample.label)]
            if seen.get(f"{sample.image}|{sample.label}") != stamp:
                todo.append((sample, stamp))
        report = CheckReport(adapter, local)
        check_pairs(adapter, [(s.image, s.label) for s, _ in todo], report)
        decoded += len(todo)
        if not report.usable:
            prefix = f"{report.dataset} at {report.root}: "
            problems = "; ".join(line.removeprefix(prefix) for line in report.lines())
            raise SegleakError(f"{prefix}{problems} (the whole tree: `segleak data check --dataset {spec['type']} "
                               f"--root {local}`)")
        seen.update({f"{s.image}|{s.label}": stamp for s, stamp in todo})
    if decoded:
        _save(cache_path, cache)
    return decoded


def _save(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)

