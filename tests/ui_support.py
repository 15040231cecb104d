"""Shared helpers for the dashboard's browser tests (no tests in here).

- `browser(downloads)`: Debian's headless Chromium through its chromium-driver (selenium),
  accepting the test ops center's own CA-signed certificate, downloading into `downloads`.
- `Page`: the driver plus the ops center's URL: `open`, `wait`, `shot` (a screenshot per page,
  under `SCREENSHOTS`), `overflow` (how far the page is wider than the window).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("EDGE_UI_SCREENSHOTS", REPO / "build" / "ui-screenshots"))
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def browser(downloads: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromium-driver are required: run `make setup` (apt packages)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,800")
    options.accept_insecure_certs = True  # the ops center's certificate is from its own CA
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    return webdriver.Chrome(options=options, service=Service(driver))


@dataclass
class Page:
    driver: Any
    base: str

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = check()
            except Exception:  # noqa: BLE001 (an element not there yet, a stale one)
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                self.shot(f"timeout-{what.replace(' ', '-')}")
                raise TimeoutError(f"timed out waiting for {what} on {self.driver.current_url}")
            time.sleep(0.1)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def click(self, selector: str) -> None:
        """Click what `selector` finds, again if the live table redrew it meanwhile."""
        self.wait(lambda: self.css(selector).click() or True, f"clicking {selector}")

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def rows(self, table: str) -> list[dict[str, str]]:
        """The rows of a live table read in one script: a redraw cannot stale them midway.

        Each row is its `data-name` under "name" and each `td[data-col]`'s text under its column.
        """
        return list(
            self.js(
                "return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(r =>"
                " Object.assign({name: r.dataset.name}, Object.fromEntries("
                "[...r.querySelectorAll('td[data-col]')].map(td => [td.dataset.col,"
                " td.innerText]))))",
                table,
            )
        )

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def size(self, name: str) -> None:
        width, height = SIZES[name]
        self.driver.set_window_size(width, height)
        # the window includes no chrome in headless mode, but set the viewport exactly
        inner = self.js("return [window.innerWidth, window.innerHeight]")
        self.driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def overflow(self) -> int:
        """Pixels the page is wider than the viewport (0: no sideways scrolling)."""
        return int(
            self.js(
                "return Math.max(document.documentElement.scrollWidth,"
                " document.body.scrollWidth) - document.documentElement.clientWidth"
            )
        )

    def unlabelled(self) -> list[str]:
        """Visible form fields without a label (a <label for> or aria-label)."""
        return list(
            self.js(
                "return Array.from(document.querySelectorAll('input, select, textarea'))"
                ".filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)"
                " && !e.getAttribute('aria-label')).map(e => e.name || e.id)"
            )
        )

    def low_contrast(self, minimum: float = 4.5) -> list[str]:
        """Visible text whose WCAG contrast ratio against its background (the first opaque
        one up the tree) is below `minimum`: 'tag.class "text" ratio' for each."""
        return list(self.js(_CONTRAST, minimum))


_CONTRAST = """
const minimum = arguments[0];
function rgb(text) {
  const m = text.match(/rgba?\\(([^)]+)\\)/);
  if (!m) return null;
  const p = m[1].split(',').map(Number);
  return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
}
function luminance(c) {
  const f = (v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
}
function background(e) {
  for (; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c && c.a >= 0.99) return c;
  }
  return {r: 255, g: 255, b: 255, a: 1};
}
const found = [];
for (const e of document.querySelectorAll('body *')) {
  const own = Array.from(e.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  const box = e.getBoundingClientRect();
  if (!own || box.width === 0 || box.height === 0) continue;
  const style = getComputedStyle(e);
  if (style.visibility === 'hidden') continue;
  const fg = rgb(style.color), bg = background(e);
  const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
  const ratio = (hi + 0.05) / (lo + 0.05);
  if (ratio < minimum) {
    const text = e.textContent.trim().slice(0, 30);
    found.push(`${e.tagName.toLowerCase()}.${e.className} "${text}" ${ratio.toFixed(2)}`);
  }
}
return found;
"""
