"""Reliability, round three (issue 27): names that would write outside the results folder, a full disk named
where it happened, a group_pattern that would hang, a dry run that writes nothing, values that would exhaust
memory. Real components throughout: the grid loader, the CLI, the report writer, torch.save on a small tmpfs."""

from __future__ import annotations

import errno
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmark.cli import main
from benchmark.errors import SegleakError
from benchmark.failure import LOW_SPACE_BYTES, DiskFull, disk_full_at, one_line
from benchmark.io import write_atomic
from benchmark.safe_paths import inside
from ray_jobs.grid.spec import PROFILES_DIR, load_grid
from ray_jobs.recording.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
ESCAPE = "../../../../x/ESCAPED"


def _smoke(**changes) -> dict:
    raw = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    raw.update(changes)
    return raw


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


# --- names that become paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("changes, key, value", [
    ({"datasets": {ESCAPE: {"root": "synthetic", "type": "cityscapes"}},
      "settings": [{"dataset": ESCAPE, "shadow_dataset": ESCAPE}]}, "datasets", ESCAPE),
    ({"name": "../escaped"}, "name", "../escaped"),
    ({"victim_archs": ["../mmseg_configs/pspnet_tiny"]}, "victim_archs/shadow_archs", "../mmseg_configs/pspnet_tiny"),
    ({"defenses": ["none", {"name": "../none"}]}, "defenses[1].name", "../none"),
    ({"attacks": ["a/b"]}, "attacks[0].name", "a/b"),
])
def test_a_name_that_becomes_a_path_is_refused_on_load_in_one_line(tmp_path, capsys, changes, key, value):
    path = _write(tmp_path, _smoke(**changes))
    results = tmp_path / "results"
    assert main(["benchmark", "--grid", str(path), "--results", str(results), "--dry-run"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"segleak: error: grid {path}: {key}: {value!r} is not a usable name"), line
    assert not results.exists()


def test_a_profile_name_cannot_leave_the_profiles_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--profile", "../profiles/smoke", "--dry-run"]) == 2
    assert "--profile: '../profiles/smoke' is not a usable name" in _one_line_error(capsys)


def test_names_the_profiles_use_stay_usable():
    for profile in ("smoke", "default", "extended", "paper"):
        grid = load_grid(profile)
        assert grid.datasets and grid.victim_archs  # loads: every name in it passes


def test_inside_refuses_what_resolves_outside_its_folder(tmp_path):
    out = tmp_path / "report"
    (tmp_path / "elsewhere").mkdir()
    out.mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    assert inside(out, "leakage_cityscapes.png") == out / "leakage_cityscapes.png"
    for name in ("../x.png", "/etc/x.png", "link/x.png", "a/../../x.png"):
        with pytest.raises(SegleakError, match="outside"):
            inside(out, name)


def test_the_report_refuses_a_leakage_map_outside_results_and_writes_a_good_one_inside(tmp_path):
    """The report writer itself, past the loader (a grid built in code, or a results folder from an older
    version): the leakage map's file name comes from the dataset; '../..' in it is refused, nothing escapes."""
    from benchmark.models.release import Released, save_released
    from ray_jobs.recording.tracking import Tracker
    from ray_jobs.running.reporting import Reporter
    from ray_jobs.units.base import Plan, Unit
    from ray_jobs.units.kinds.cell import CellConfig, CellMeta
    from ray_jobs.units.kinds.release import OUTPUTS

    grid = load_grid("smoke")
    store = ResultStore(tmp_path / "results")
    ids = [f"train/img{i}" for i in range(6)]
    generator = torch.Generator().manual_seed(0)
    released = Released(ids, torch.randn(6, 19, 8, 16, generator=generator).log_softmax(1).half(),
                        torch.randint(0, 19, (6, 8, 16), generator=generator).to(torch.uint8))
    with store.writing("release", "release-r", {"members": ids[:3]}) as out:
        save_released(released, out / OUTPUTS)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", grid.name, {}, artifact_root=str(tmp_path))

    def report(dataset: str) -> dict:
        meta = CellMeta(dataset=dataset, victim_arch="pspnet_tiny", shadow_dataset=dataset, shadow_arch="pspnet_tiny",
                        shadow_overlap=0.5, defense="none", defense_params="{}", defense_label="none",
                        attack="loss_threshold", representation="loss", attack_label="loss_threshold", seed=0,
                        control="none", setting="dependent", adaptive=False)
        config = CellConfig(fit="fit-f", release="release-r", victim_model="model-m", dataset={"type": "cityscapes"},
                            output_defense={"name": "none"}, scored_ids=ids, seed=0)
        plan = Plan()
        plan.add(Unit("cell", "cell-c", config, ("release-r",), "cell", meta))
        return Reporter(plan, store, tracker).write_report(grid)

    with pytest.raises(SegleakError, match=r"refusing to write 'leakage_\.\./\.\./\.\./\.\./x/ESCAPED_pspnet_tiny_"):
        report(ESCAPE)
    assert not list(tmp_path.rglob("ESCAPED*"))  # the old code wrote <results>/x/ESCAPED_pspnet_tiny_....png
    assert not (tmp_path / "results" / "report").exists()  # the staging folder went, no partial report
    written = report("cityscapes")["leakage"]
    assert [p.name for p in written] == ["leakage_cityscapes_pspnet_tiny_elease-r.png"]
    assert written[0].is_file() and written[0].parent == tmp_path / "results" / "report" / "leakage"
    tracker.finish("FINISHED")


# --- group_pattern ----------------------------------------------------------------------------------------

def _generic(tmp_path: Path, pattern: str, stems: list[str]) -> Path:
    """A tiny generic-layout dataset with these file stems, and a grid using it with `pattern`."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        for folder in ("img_dir", "ann_dir"):
            (root / folder / split).mkdir(parents=True)
        for i, stem in enumerate(stems):
            Image.fromarray(np.full((32, 64, 3), 40 * i % 255, np.uint8)).save(root / "img_dir" / split / f"{stem}.png")
            Image.fromarray(np.full((32, 64), i % 2, np.uint8)).save(root / "ann_dir" / split / f"{stem}.png")
    dataset = {"root": str(root), "type": "generic", "classes": ["a", "b"], "img_suffix": ".png",
               "group_pattern": pattern}
    return _write(tmp_path, _smoke(datasets={"gen": dataset}, settings=[{"dataset": "gen"}]))


@pytest.mark.parametrize("pattern, problem", [
    ("[abc", "is not a valid regular expression (unterminated character set at position 4)"),
    ("^seq", "has no group: put the part of the file name that names the image's group in parentheses, "
             "e.g. '^(seq\\d+)_'"),
])
def test_a_malformed_group_pattern_is_refused_on_load_naming_key_and_file(tmp_path, pattern, problem):
    path = _generic(tmp_path, pattern, ["seq1_a"])
    with pytest.raises(SegleakError) as refused:
        load_grid(grid_file=path)
    assert str(refused.value) == f"grid {path}: datasets.gen: dataset 'generic': group_pattern {pattern!r} {problem}"


def test_a_group_pattern_that_backtracks_without_end_is_refused_in_seconds(tmp_path):
    """'(a|aa)+$' on 40 letters and a '!' takes days in `re`; matched with a timeout it ends in one line naming
    the key, the pattern, the file name and the grid file. A subprocess: on the old code it hangs."""
    stems = ["a" * 40 + "!", "b" * 40 + "!"]
    path = _generic(tmp_path, "^(a|aa)+$", stems)
    started = time.time()
    run = subprocess.run([sys.executable, "-m", "benchmark.cli", "benchmark", "--grid", str(path), "--results",
                          str(tmp_path / "r"), "--dry-run"], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2, run.stderr[-2000:]
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"segleak: error: grid {path}: datasets.gen: group_pattern '^(a|aa)+$' took over 0.2 s "
                           f"on the file name {stems[0]!r}: nested repetition"), line
    assert time.time() - started < 120


def test_the_issue_pattern_on_long_names_groups_in_bounded_time():
    """`^(a+)+$` (the probe's: 150 s at full CPU in `re` on 41-character names) runs in the `regex` engine."""
    code = ("import time; from benchmark.data.adapters import group_by_pattern as g; t = time.time(); "
            "print(g('train/' + 'a' * 40 + '!', '^(a+)+$'), g('train/seq7_x', '^(seq\\\\d+)_'), round(time.time() - t))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["train/" + "a" * 40 + "!", "train/seq7", "0"]


# --- values that would exhaust memory; a dry run that writes nothing ---------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"attack_train": {**_smoke()["attack_train"], "n_crops_train": 100_000_000}},
     "attack_train.n_crops_train: value 100000000 is outside [1, 10000]"),
    ({"attack_train": {**_smoke()["attack_train"], "n_crops_test": 10_001}},
     "attack_train.n_crops_test: value 10001 is outside [1, 10000]"),
    ({"seeds": list(range(10_000))}, "seeds: 10000 values, at most 1000: each seed repeats the whole grid"),
])
def test_values_that_would_exhaust_memory_are_refused_in_one_line(tmp_path, capsys, changes, message):
    path = _write(tmp_path, _smoke(**changes))
    assert main(["benchmark", "--grid", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    assert _one_line_error(capsys).startswith(f"segleak: error: grid {path}: {message}")
    assert not (tmp_path / "r").exists()


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_dry_run_writes_nothing_into_results_and_says_what_a_run_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default ./results
    assert main(["benchmark", "--profile", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "results").exists(), _tree(tmp_path / "results")
    (line,) = [ln for ln in out.splitlines() if ln.startswith("disk: ")]
    assert line.startswith(f"disk: a run writes 2 membership splits (0.0") and "MB of synthetic data into" in line
    synthetic_mb = float(line.split(" MB of synthetic data")[0].rsplit(" ", 1)[1])
    # what it says a run writes is what a run writes: the data and splits a real run's preparation leaves
    from ray_jobs.grid.sources import make_manifests, prepare_sources

    grid, store = load_grid("smoke"), ResultStore(tmp_path / "results")
    make_manifests(grid, prepare_sources(grid, store), store)
    data = sum(p.stat().st_size for p in (tmp_path / "results" / "data").rglob("*") if p.is_file()) / 1e6
    assert len(list((tmp_path / "results" / "splits").iterdir())) == 2 and synthetic_mb == pytest.approx(data, rel=0.01)
    # over a results folder that has data already: it is read in place, and still nothing changes
    before = _tree(tmp_path / "results")
    assert main(["benchmark", "--profile", "smoke", "--dry-run"]) == 0
    assert "0 MB of synthetic data" in capsys.readouterr().out
    assert _tree(tmp_path / "results") == before


# --- a full disk --------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fail_to_save(store: ResultStore, tensor: torch.Tensor, atomic: bool) -> DiskFull:
    """torch.save into a unit that does not fit, to the path or (as the model trainer does) through
    write_atomic's file object; the DiskFull raised, its traceback dropped (its frames hold torch's file
    writer, whose unlinked file keeps its blocks until the writer is freed)."""
    try:
        with store.writing("model", "model-big", {}) as out:
            if atomic:
                write_atomic(out / "model.pt", lambda handle: torch.save({"w": tensor}, handle))
            else:
                torch.save({"w": tensor}, out / "model.pt")
    except DiskFull as exc:
        exc.__traceback__ = None
        if exc.__cause__ is not None:
            exc.__cause__.__traceback__ = None
        return exc
    raise AssertionError("the write fitted")


@pytest.mark.parametrize("atomic", [False, True])
def test_torch_save_on_a_full_disk_is_named_and_a_smaller_write_then_works(small_disk, atomic):
    store = ResultStore(small_disk)
    full = _fail_to_save(store, torch.zeros(2**19), atomic)  # 2 MiB on a 1 MiB disk
    assert "inline_container" in str(full.__cause__)  # torch's way of saying ENOSPC
    where = small_disk / "model" / "model-big" / ("model.pt" if atomic else "")
    assert full.path == str(where).rstrip("/") and full.free < LOW_SPACE_BYTES
    assert str(full).startswith(f"disk full at {full.path} (")
    assert str(full).endswith("KiB free): free some space and run again; finished units are kept")
    assert one_line(full) == str(full)
    del full
    gc.collect()
    assert os.listdir(small_disk / "model") == []  # the partial temp dir went, its space is free again
    with store.writing("model", "model-small", {}) as out:  # recovery: with space, writing works
        torch.save({"w": torch.zeros(2**14)}, out / "model.pt")
    assert store.is_done("model", "model-small")


def test_a_write_failure_with_space_left_is_not_called_a_full_disk(tmp_path):
    """The null check of the free-space rule: the same torch error with plenty of space is not a full disk,
    and an ENOSPC is one whatever the space (a quota)."""
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert disk_full_at(torch_error, tmp_path) is None
    assert disk_full_at(ValueError("no write here"), tmp_path) is None
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert isinstance(disk_full_at(quota, tmp_path), DiskFull)


def test_a_unit_that_fills_the_disk_is_not_retried_as_a_crash(small_disk):
    """The Ray task entry point on a full disk: DiskFull (which Ray does not retry), not UnitCrashed; with space
    again the same unit computes."""
    from ray_jobs.units import UnitCrashed, execute

    threads = torch.get_num_threads()
    config = {"role": "model", "index": 0, "ids": [f"train/img{i}" for i in range(100)]}
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        with pytest.raises(OSError) as filled:
            while True:
                handle.write(b"\0" * 4096)
    assert filled.value.errno == errno.ENOSPC
    try:
        with pytest.raises(DiskFull) as full:
            execute("noop", "noop-1", config, str(small_disk), 1)
        assert not isinstance(full.value, UnitCrashed) and full.value.path.startswith(str(small_disk))
        filler.unlink()
        assert execute("noop", "noop-1", config, str(small_disk), 1) == {"role": "model", "n_ids": 100}
    finally:
        torch.set_num_threads(threads)
