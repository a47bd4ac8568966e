"""Debian's Chromium, headless, driven by Playwright (which downloads no browser): the UI and page tests."""

from __future__ import annotations

import os
import shutil
import subprocess

CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    """Debian's Chromium: installed with apt-get when missing and the tests run as root (as .ci/run does)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
        found = shutil.which("chromium")
    assert found, "the UI tests need Debian's chromium: apt-get install -y chromium"
    return found
