"""A real browser for the page tests: Debian's chromium, headless, driven by Playwright (which downloads nothing).

Each `open_page()` starts a fresh chromium with its own new profile folder. The browser resolves no host name but
127.0.0.1, so a page that needed the internet (a CDN) would fail; `BrowserPage.outside_requests` also records
any request that tried to leave the loopback, and `console_errors` what the page reported (a Content-Security-
Policy violation is one), so a test can assert that there were none.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No network beyond the loopback: every other host name fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
WAIT_LIMIT_MS = 60_000
"""Only a guard against hanging: every wait polls for an element or a text, so a slow machine only waits longer."""

expect.set_options(timeout=WAIT_LIMIT_MS)

_ANSWERED = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class BrowserPage:
    page: Page
    origin: str
    outside_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """Every request, answer, failure and console message, printed when a test fails."""

    def open(self, path: str) -> None:
        """Load a page of the server and check that it was answered 200."""
        response = self.page.goto(self.origin + path)
        assert response is not None and response.status == 200, f"GET {path} answered {response and response.status}"

    def assert_stayed_local_and_quiet(self, *, answered: tuple[int, ...] = ()) -> None:
        """No request beyond the server, and no console error but the browser's note of an HTTP answer with a
        status in `answered` (an answer the test expects the page to explain) or 503 (busy, starting or draining:
        the page tries again as the answer's Retry-After asks)."""
        assert self.outside_requests == [], "the page tried to reach beyond the server"
        expected = {*answered, 503}
        errors = [
            error
            for error in self.console_errors
            if not ((match := _ANSWERED.match(error)) and int(match.group(1)) in expected)
        ]
        assert errors == [], "the page reported errors"


@contextmanager
def open_page(
    origin: str, *, width: int = 1100, height: int = 900, color_scheme: str = "light"
) -> Iterator[BrowserPage]:
    """A new tab in a fresh headless chromium, for pages served at `origin` (http://127.0.0.1:PORT)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (the page tests drive Debian's chromium)")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": width, "height": height},
            color_scheme=color_scheme,
        )
        context.set_default_timeout(WAIT_LIMIT_MS)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            watched = BrowserPage(page, origin)

            def on_request(request) -> None:
                url = request.url
                watched.events.append(f"request {request.method} {url}")
                if not (url.startswith((origin + "/", "blob:", "data:"))):
                    watched.outside_requests.append(url)

            def on_console(message) -> None:
                watched.events.append(f"console {message.type}: {message.text}")
                if message.type == "error":
                    watched.console_errors.append(message.text)

            page.on("request", on_request)
            page.on("response", lambda response: watched.events.append(f"response {response.status} {response.url}"))
            page.on(
                "requestfailed",
                lambda request: watched.events.append(f"failed {request.method} {request.url}: {request.failure}"),
            )
            page.on("console", on_console)
            page.on("pageerror", lambda error: watched.console_errors.append(str(error)))
            try:
                yield watched
            except BaseException:
                _report(watched)
                raise
        finally:
            context.close()


def _report(watched: BrowserPage) -> None:
    """What the browser saw, for the failure report (pytest shows a failed test's output)."""
    print("--- browser events:", *watched.events, sep="\n  ")
    try:
        print("--- page at failure:", watched.page.url, watched.page.inner_text("body", timeout=5_000)[:3000], sep="\n")
    except Exception as exc:  # the report must not hide the failure itself
        print(f"--- page text unavailable: {exc}")


def _data_transfer(page: Page, paths: list[Path]):
    """A DataTransfer in the page holding the files, as a file manager's drag or the clipboard would."""
    files = [
        {"name": path.name, "type": "image/png", "data": base64.b64encode(path.read_bytes()).decode()} for path in paths
    ]
    return page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const file of files) {
                const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], file.name, {type: file.type}));
            }
            return transfer;
        }""",
        files,
    )


def drop_files(page: Page, selector: str, paths: list[Path]) -> None:
    """Drop files on an element as a person dragging them from a file manager would."""
    data_transfer = _data_transfer(page, paths)
    page.dispatch_event(selector, "dragover", {"dataTransfer": data_transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": data_transfer})


def paste_files(page: Page, paths: list[Path]) -> None:
    """Paste files into the page, as Ctrl+V with an image copied does."""
    page.evaluate(
        "(transfer) => document.activeElement.dispatchEvent(new ClipboardEvent('paste', "
        "{clipboardData: transfer, bubbles: true, cancelable: true}))",
        _data_transfer(page, paths),
    )
