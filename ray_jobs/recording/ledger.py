"""The ledger: every computation that completes adds one small file under `<root>/ledger/` (also one whose
result was not published because an identical computation got there first), with the invocation, host, pid
and seconds: one object per event, as a bucket cannot append (nor is O_APPEND atomic on NFS). Tests count
trainings with it. A mixin of `ResultStore`, which provides the I/O."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ray_jobs.recording.owner import TEMP_PREFIX

LEDGER = "ledger"


class Ledger:
    """The ledger half of `ResultStore`."""

    def append_ledger(self, event: dict[str, Any]) -> None:
        name = f"{LEDGER}/{time.time_ns():020d}-{event['key']}-{uuid.uuid4().hex[:8]}.json"
        self._write_bytes(name, json.dumps({**event, "time": time.time()}, sort_keys=True).encode())

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger event, oldest first."""
        # an event still being written on a path is `.tmp-<name>.json@<owner>`: not listed
        names = [p for p in self.fs.find(self._path(LEDGER)) if p.endswith(".json")
                 and not p.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)]
        events = [json.loads(blob) for blob in self.fs.cat(names).values()] if names else []
        return sorted(events, key=lambda e: e["time"])

    # -----------------------------------------------------------------------------------------------------
    # leftovers
