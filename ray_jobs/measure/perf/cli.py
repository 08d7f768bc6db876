"""`python -m ray_jobs.measure.perf` / `make bench`: every section in turn, the JSON and the printed table."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ray_jobs.measure.perf.common import FULL, QUICK, format_profile, format_table, machine_info
from ray_jobs.measure.perf.dp import bench_dp, dp_rows
from ray_jobs.measure.perf.driver import bench_driver, driver_rows
from ray_jobs.measure.perf.features import bench_features, feature_rows
from ray_jobs.measure.perf.planning import bench_planning, planning_rows
from ray_jobs.measure.perf.release import bench_release, make_release, release_rows
from ray_jobs.measure.perf.smoke import bench_smoke, smoke_rows
from ray_jobs.measure.perf.training import bench_training, training_rows

SECTIONS = ("features", "training", "dp", "planning", "smoke", "driver")


def run(quick: bool, workdir: Path, log: Callable[[str], None], sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """The chosen sections in turn (released bytes always); returns the JSON-able result with the table in it."""
    sizes = QUICK if quick else FULL
    default_threads = torch.get_num_threads()
    out: dict[str, Any] = {"quick": quick, "machine": machine_info(default_threads), "sizes": sizes.__dict__,
                           "sections": list(sections)}
    rows = []
    if "features" in sections:
        log("features ...")
        out["features"] = bench_features(sizes, default_threads)
        rows += feature_rows(out["features"])
    if "training" in sections:
        log("training steps ...")
        out["training"] = bench_training(sizes)
        rows += training_rows(out["training"])
    if "dp" in sections:
        log(f"DP-SGD steps ({sizes.dp_arch}: ghost, ew, plain) ...")
        out["dp"] = bench_dp(sizes, isolate=not quick)
        rows += dp_rows(out["dp"])
    if "planning" in sections:
        log("planning ...")
        out["planning"] = {p: bench_planning(p) for p in ("default", "paper")}
        rows += planning_rows(out["planning"])
    out["smoke"] = None
    if "smoke" in sections and not quick:
        log("smoke profile (twice) and in-process replay ...")
        out["smoke"] = bench_smoke(workdir)
    rows += smoke_rows(out["smoke"])
    smoke_files = [Path(p) for p in out["smoke"]["release_files"]] if out["smoke"] else []
    out["release"] = bench_release(smoke_files or [make_release(workdir / "outputs.npz")])
    out["release"]["source"] = "smoke run" if smoke_files else "synthetic posteriors"
    rows += release_rows(out["release"])
    if "driver" in sections:
        out["driver"] = bench_driver(quick, workdir, log)
        rows += driver_rows(out["driver"])
    out["table"] = [r.__dict__ for r in rows]
    return out


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section {unknown[0] if unknown else text!r} "
                                         f"(known: {', '.join(SECTIONS)})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.measure.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench.json", help="where to write the JSON (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no smoke run (for tests)")
    parser.add_argument("--only", type=_sections, default=SECTIONS, metavar="SECTIONS",
                        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated")  # mmseg, per model built
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segleak-bench-") as tmp:
        result = run(args.quick, Path(tmp), lambda m: print(f"bench: {m}", file=sys.stderr, flush=True), args.only)
    result["bench_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    m = result["machine"]
    print(f"\nsegleak bench on {m['cpu_model']}, {m['cores']} cores, torch {m['versions'].get('torch')}, {m['date']}")
    print(format_table(result["table"]))
    for profile, plan in (result.get("planning") or {}).items():
        if plan["error"]:
            print(f"* plan '{profile}': {plan['error']}")
    if result["smoke"]:
        print(format_profile(result["smoke"]["units_profile_in_process"], "\nsmoke units in-process, top of our code:"))
        print(format_profile(result["smoke"]["units_profile_own_time"], "smoke units in-process, most own time (any code):"))
        print(format_profile(result["smoke"]["driver_profile_cached_run"], "driver, cached run, top of our code:"))
    print(f"\nwritten {out} ({result['bench_seconds']:.0f} s)")
    return 0
