"""The demo page at / and Swagger UI at /docs, in a real browser (Debian's chromium) against a real server.

The browser reaches nothing but the server: every page must work offline, with its strict Content-Security-Policy
(a violation would be a console error, which the tests refuse). Set PAGE_SCREENSHOT=docs/demo-page.png to save
the screenshot of the classified images that the README shows.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.images import random_png
from tests.integration.browser import drop_files, open_page, paste_files

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
SNEAKER = EXAMPLES / "sneaker.png"
BAG = EXAMPLES / "bag.png"


def result_card(page, filename: str):
    return page.locator("#results .result").filter(has=page.locator(".filename", has_text=filename))


# ------------------------------------------------------------------------------------------------ in a browser


def test_uploading_an_image_shows_its_labels_as_bars_with_scores_and_timings(bundled_server):
    with open_page(bundled_server.url) as browser:
        page = browser.page
        browser.open("/")
        expect(page.locator("#model")).to_have_value("fashion-mnist-resnet20")
        page.set_input_files("#file-input", str(SNEAKER))

        card = result_card(page, "sneaker.png")
        expect(card.locator(".score.top .label")).to_have_text("Sneaker")
        expect(card.locator(".score")).to_have_count(5)
        expect(card.locator(".score.top .value")).to_have_text(re.compile(r"^>?\d+\.\d%$"))
        expect(card.locator(".meta")).to_contain_text("280 × 280 px")
        expect(card.locator(".timings")).to_contain_text("inference")
        assert card.locator(".thumb img").evaluate("image => image.complete && image.naturalWidth") == 280
        top_bar = card.locator(".score.top .fill").evaluate("fill => fill.getBoundingClientRect().width")
        assert top_bar > 0.9 * card.locator(".score.top .bar").evaluate("bar => bar.getBoundingClientRect().width")
        browser.assert_stayed_local_and_quiet()


def test_two_dropped_files_are_both_classified(bundled_server):
    with open_page(bundled_server.url, width=1000) as browser:
        page = browser.page
        browser.open("/")
        expect(page.locator("#model")).to_have_value("fashion-mnist-resnet20")
        drop_files(page, "#drop-zone", [SNEAKER, BAG])

        expect(page.locator("#results .result")).to_have_count(2)
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        expect(result_card(page, "bag.png").locator(".score.top .label")).to_have_text("Bag")
        browser.assert_stayed_local_and_quiet()
        if os.environ.get("PAGE_SCREENSHOT"):
            page.locator("#results .result .thumb img").last.evaluate("image => image.decode()")
            page.screenshot(path=str(REPO_ROOT / os.environ["PAGE_SCREENSHOT"]), full_page=True)


def test_a_pasted_image_is_classified(bundled_server):
    with open_page(bundled_server.url) as browser:
        page = browser.page
        browser.open("/")
        paste_files(page, [SNEAKER])
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        browser.assert_stayed_local_and_quiet()


def test_a_file_that_is_no_image_is_refused_in_plain_words(bundled_server, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not pixels\n")
    with open_page(bundled_server.url) as browser:
        page = browser.page
        browser.open("/")
        page.set_input_files("#file-input", [str(notes), str(SNEAKER)])
        error = result_card(page, "notes.png").locator(".error")
        expect(error).to_contain_text("This file could not be decoded as an image")
        expect(error.locator(".detail")).to_contain_text("notes.png")  # the server's own words, for the curious
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        browser.assert_stayed_local_and_quiet(answered=(400,))


def test_the_keyboard_alone_can_choose_and_classify_an_image(bundled_server):
    with open_page(bundled_server.url) as browser:
        page = browser.page
        # The file dialog a person would see; listening before the page loads has chromium report every one.
        page.on("filechooser", lambda chooser: chooser.set_files(str(SNEAKER)))
        browser.open("/")
        for _ in range(12):  # Tab through the links and settings to the button
            if page.evaluate("document.activeElement.id") == "choose":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "choose"
        page.keyboard.press("Enter")
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        browser.assert_stayed_local_and_quiet()


def test_the_model_and_k_chosen_on_the_page_are_used(tiny_server):
    with open_page(tiny_server.url) as browser:
        page = browser.page
        browser.open("/")
        expect(page.locator("#model option")).to_have_count(3)  # the models GET /v1/models lists
        page.select_option("#model", "tiny-sidecar")
        expect(page.locator("#model-info")).to_contain_text("10 classes")
        page.fill("#top-k", "2")
        page.locator("#top-k").press("Tab")
        page.set_input_files("#file-input", str(SNEAKER))

        card = result_card(page, "sneaker.png")
        expect(card.locator(".meta")).to_contain_text("tiny-sidecar")
        expect(card.locator(".score")).to_have_count(2)
        for label in card.locator(".score .label").all_inner_texts():
            assert label.startswith("sidecar-")  # the labels of that model's sidecar file

        page.fill("#top-k", "3")  # changing k classifies the images on the page again
        page.locator("#top-k").press("Tab")
        expect(card.locator(".score")).to_have_count(3)
        browser.assert_stayed_local_and_quiet()


def test_an_upload_over_the_limit_says_how_large_the_limit_is(start_server, tmp_path):
    server = start_server("--max-upload-bytes", "2048", "--no-access-log").wait_ready()
    large = tmp_path / "noise.png"
    large.write_bytes(random_png(seed=1, size=96))  # about 9 KiB of incompressible pixels
    with open_page(server.url) as browser:
        page = browser.page
        browser.open("/")
        page.set_input_files("#file-input", str(large))
        error = result_card(page, "noise.png").locator(".error")
        expect(error).to_contain_text("This file is too large: the server accepts at most 2 KiB per request")
        expect(error).to_contain_text("this file is 9")
        browser.assert_stayed_local_and_quiet(answered=(413,))


def test_a_503_with_retry_after_is_retried_before_it_is_shown(bundled_server):
    with open_page(bundled_server.url) as browser:
        page = browser.page
        refused: list[str] = []

        def busy_once(route) -> None:
            # The server's answer when a model's queue is full (a real one needs a held model: see test_backpressure).
            if not refused:
                refused.append(route.request.url)
                route.fulfill(
                    status=503,
                    headers={"Retry-After": "1"},
                    content_type="application/json",
                    body='{"error": {"status": 503, "code": "overloaded", "message": "the queue is full"}}',
                )
            else:
                route.continue_()

        page.route("**/classify*", busy_once)
        browser.open("/")
        page.set_input_files("#file-input", str(SNEAKER))
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        assert len(refused) == 1
        browser.assert_stayed_local_and_quiet()


def test_the_api_key_is_sent_as_a_header_and_kept_in_session_storage_only(bundled_server):
    with open_page(bundled_server.url) as browser:
        page = browser.page
        sent_keys: list[str | None] = []
        page.on(
            "request",
            lambda request: sent_keys.append(request.headers.get("x-api-key")) if "/classify" in request.url else None,
        )
        browser.open("/")
        page.fill("#api-key", "demo-key-123")
        page.set_input_files("#file-input", str(SNEAKER))
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        assert sent_keys == ["demo-key-123"]
        assert page.evaluate("sessionStorage.getItem('resnet-serve.api-key')") == "demo-key-123"
        assert page.evaluate("localStorage.length") == 0
        assert "demo-key-123" not in page.url

        browser.open("/")  # the same tab, loaded again, keeps the key
        expect(page.locator("#api-key")).to_have_value("demo-key-123")
        browser.assert_stayed_local_and_quiet()


def test_the_page_fits_a_phone_screen(bundled_server):
    with open_page(bundled_server.url, width=360, height=740, color_scheme="dark") as browser:
        page = browser.page
        browser.open("/")
        page.set_input_files("#file-input", str(SNEAKER))
        expect(result_card(page, "sneaker.png").locator(".score.top .label")).to_have_text("Sneaker")
        assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
        browser.assert_stayed_local_and_quiet()


def test_docs_render_the_operations_with_no_network(bundled_server):
    with open_page(bundled_server.url) as browser:
        page = browser.page
        browser.open("/docs")
        paths = page.locator(".opblock-summary-path")
        expect(paths.filter(has_text=re.compile(r"^/v1/classify$"))).to_have_count(1)
        listed = set(paths.all_inner_texts())
        assert {"/v1/classify", "/v1/models/{name}/classify", "/v1/models", "/healthz", "/readyz"} <= listed
        expect(page.locator(".opblock-summary-method").first).to_be_visible()
        browser.assert_stayed_local_and_quiet()


# ------------------------------------------------------------------------------------------------ over HTTP


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<style|\sstyle=|\son\w+=", re.IGNORECASE)


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_pages_carry_a_strict_csp_and_are_revalidated(bundled_server, path):
    response = httpx.get(bundled_server.url + path, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    directives = response.headers["content-security-policy"].split(";")
    policy = dict(directive.strip().split(" ", 1) for directive in directives)
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["img-src"] == "'self' blob: data:"
    assert policy["frame-ancestors"] == "'none'"
    html = response.text
    assert not INLINE_SCRIPT.search(html), "inline scripts would need 'unsafe-inline'"
    assert not INLINE_STYLE.search(html), "inline styles and handlers would need 'unsafe-inline'"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "every asset comes from the server itself"


def test_assets_are_immutable_at_their_versioned_url_and_revalidated_otherwise(bundled_server):
    html = "".join(httpx.get(bundled_server.url + path, timeout=30).text for path in ("/", "/docs"))
    urls = set(re.findall(r"(?:src|href)=\"(static/[^\"]+)\"", html))
    assert {url.split("?")[0] for url in urls} >= {
        "static/page.js",
        "static/page.css",
        "static/docs.js",
        "static/swagger-ui/swagger-ui-bundle.js",
        "static/swagger-ui/swagger-ui.css",
    }
    for url in urls:
        versioned = httpx.get(f"{bundled_server.url}/{url}", timeout=30)
        assert versioned.status_code == 200, url
        assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert versioned.headers["x-content-type-options"] == "nosniff"
        bare = httpx.get(f"{bundled_server.url}/{url.split('?')[0]}", timeout=30)
        assert bare.headers["cache-control"] == "no-cache"
        assert bare.content == versioned.content
        again = httpx.get(
            f"{bundled_server.url}/{url}", headers={"If-None-Match": versioned.headers["etag"]}, timeout=30
        )
        assert again.status_code == 304 and again.content == b""
    script = httpx.get(f"{bundled_server.url}/static/page.js", timeout=30)
    assert script.headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path", ["/static/index.html", "/static/swagger-ui/redoc.standalone.js", "/static/nothing.js", "/redoc"]
)
def test_only_the_assets_are_served(bundled_server, path):
    assert httpx.get(bundled_server.url + path, timeout=30).status_code == 404


def test_the_page_calls_the_public_api_only():
    script = (resources.files("service") / "static" / "page.js").read_text()
    assert not re.search(r"https?://", script)
    assert set(re.findall(r"[\"`](/?v\d/[^\"`]*)[\"`]", script)) == {
        "v1/models",
        "v1/models/${encodeURIComponent(model)}/classify",
        "v1/classify",
    }
    assert len(re.findall(r"\bfetch\(", script)) == 1  # every call goes through callApi
