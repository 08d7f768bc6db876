"""Headless Chromium for the tests that read a page as a person would (Debian's `chromium`; `make test`
installs it when it runs as root, see the Makefile's `chromium` target). Without it those tests skip, saying so."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium: `make chromium` installs Debian's package (as root)")


def chromium(*args: str, profile: Path, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a fresh profile (a first visit: nothing remembered in local storage)."""
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=timeout_s)


def rendered_text(url: str, profile: Path, budget_ms: int = 20000) -> tuple[str, str]:
    """(title, visible text) of a page after its scripts ran for `budget_ms` of virtual time."""
    done = chromium("--window-size=1400,900", f"--virtual-time-budget={budget_ms}", "--dump-dom", url, profile=profile)
    dom = done.stdout
    title = re.search(r"<title>(.*?)</title>", dom, flags=re.S)
    body = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))
    return (title[1].strip() if title else ""), text
