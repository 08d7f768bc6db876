"""`segleak ui` as a person meets it (issue 26, issue 27 item 9): the address it prints opens, in a fresh
headless Chromium, the experiment's runs table (read from the rendered page, not from a tag), and a
`kill -9` of `segleak ui` does not leave its `mlflow server` holding the port."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import needs_chromium, rendered_text

from analysis import schema
from analysis.server import free_port, port_in_use
from ray_jobs.recording.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Tracker]:
    results = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{results / 'mlflow.db'}"
    tracker = Tracker(uri, "segleak-ui-test", {"results": str(results)}, artifact_root=str(results))
    tracker.log_run(schema.CELL, "loss_threshold pspnet none", {"dataset": "synthetic-cityscapes"},
                    {schema.UNIT_TAG: "cell-ui"}, {"auc": 0.61})
    tracker.finish("FINISHED")
    return uri, tracker


@contextlib.contextmanager
def segleak_ui(uri: str):
    """`segleak ui` in its own session: (the process, the address it printed)."""
    port = free_port()
    cli = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert select.select([cli.stdout], [], [], 180)[0], "segleak ui printed nothing"
        line = cli.stdout.readline()
        found = re.search(r" at (http://127\.0\.0\.1:\d+\S*) ", line)
        assert found, (line, cli.poll())
        yield cli, found[1]
    finally:
        if cli.poll() is None:
            cli.send_signal(signal.SIGTERM)
            try:
                cli.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                cli.kill()
                cli.communicate()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@needs_chromium
def test_the_printed_address_opens_the_runs_table_in_a_fresh_browser(store, tmp_path):
    uri, tracker = store
    with segleak_ui(uri) as (_, url):
        assert url.endswith(f"/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning")
        title, text = rendered_text(url, tmp_path / "fresh")
        parent = tracker.client.get_run(tracker.parent_id).info.run_name
        assert title.startswith("Runs - "), title
        assert "Run Name" in text and parent in text and "matching runs" in text, text[:2000]
        assert "Traces 0" not in text and "Token Usage" not in text  # not the GenAI overview
        # the control: the experiment's page without the view in the address is the GenAI overview, whatever
        # the experiment's kind tag says (what the page looked like before)
        base = url.split("/#/", 1)[0]
        title, text = rendered_text(f"{base}/#/experiments/{tracker.experiment_id}", tmp_path / "control")
        assert title.startswith("Overview - ") and "Traces 0" in text, (title, text[:1000])


def test_kill_9_of_segleak_ui_does_not_orphan_its_server(store):
    uri, _ = store
    with segleak_ui(uri) as (cli, url):
        port = int(url.split(":")[2].split("/")[0])
        servers = _children(cli.pid)
        assert servers and port_in_use(port)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        deadline = time.monotonic() + 60
        while (port_in_use(port) or any(map(_alive, servers))) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in servers if _alive(pid)]
        for pid in left:  # do not leave them to the next test either
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert not left and not port_in_use(port), "mlflow server outlived a kill -9 of segleak ui"
