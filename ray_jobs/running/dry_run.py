"""`segleak benchmark --dry-run` leaves the results folder as it was (issue 26: it wrote 17 MB there, 159 MB
for 10,000 seeds). It reads what is finished from the results folder; what its checks have to generate (a
synthetic dataset not written yet, the image check's memory of intact pairs) goes to a scratch folder that is
removed at the end; the files a real run would write first (the membership splits) are counted, not written,
and the dry run says how much they and the generated data weigh."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmark.data.synth import MARKER as SYNTH_MARKER
from benchmark.redact import redact
from ray_jobs.recording.store import ResultStore
from ray_jobs.running.preflight import CHECKED


class DryRunStore(ResultStore):
    """A results store that is read, never written: data goes to `scratch`, small files are only counted."""

    def __init__(self, root: str, scratch: Path) -> None:
        super().__init__(root)
        self.scratch = scratch
        self.would_write: dict[str, int] = {}  # path relative to the root -> bytes
        real = self.local_root / "data"
        if real.is_dir():  # what a run wrote before is used in place, read-only
            for folder in real.glob("synthetic-*"):
                if (folder / SYNTH_MARKER).is_file():
                    (scratch / folder.name).symlink_to(folder, target_is_directory=True)
            if (real / CHECKED).is_file():
                shutil.copyfile(real / CHECKED, scratch / CHECKED)

    @property
    def data_dir(self) -> Path:
        return self.scratch

    def prepare(self) -> None:
        """Nothing to create: a dry run does not even make the results folder."""

    def _write_bytes(self, relative: str, data: bytes) -> None:
        self.would_write[relative] = len(data)

    def generated_bytes(self) -> int:
        """Bytes of the data the checks generated (a run would write them into `<results>/data`)."""
        fresh = [entry for entry in self.scratch.iterdir() if entry.is_dir() and not entry.is_symlink()]
        return sum(p.stat().st_size for folder in fresh for p in folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def dry_run_store(root: str) -> Iterator[DryRunStore]:
    """A DryRunStore over `root` whose scratch folder is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="segleak-dry-run-") as scratch:
        yield DryRunStore(root, Path(scratch))


def print_writes(store: DryRunStore, stream=sys.stdout) -> None:
    """What a real run writes before its first unit, in files and megabytes (this dry run wrote none of it)."""
    splits = [n for n in store.would_write if n.startswith("splits/")]
    split_mb = sum(store.would_write[n] for n in splits) / 1e6
    print(f"disk: a run writes {len(splits)} membership splits ({split_mb:.3g} MB) and "
          f"{store.generated_bytes() / 1e6:.3g} MB of synthetic data into {redact(store.root)} before its first "
          "unit; this dry run wrote nothing there", file=stream)
