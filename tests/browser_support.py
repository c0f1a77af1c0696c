"""Headless Chromium for the tests that render the HTML pages fremure writes (report, predict viewer);
they skip where no Chromium-family browser is installed (CI installs one)."""

from __future__ import annotations

import shutil
import subprocess

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome", "headless_shell")


def browser() -> str | None:
    """A Chromium-family browser on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def render(html_path, out_png, width: int = 1300, height: int = 1800) -> str:
    """(DOM text after rendering, screenshot written to ``out_png``) with headless Chromium."""
    exe = browser()
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}"]
    dom = subprocess.run(base + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run(base + [f"--screenshot={out_png}", html_path.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert shot.returncode == 0 and out_png.is_file(), shot.stderr[-2000:]
    return dom.stdout
