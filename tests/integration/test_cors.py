"""CORS (`--cors-origins`) from a page on another origin, in headless Debian chromium against a real server: the page
(served by a small server of the test on another port, so another origin) calls /v1 and V2 with an API key, which
needs a preflight, and reads the headers a client needs; an origin not listed, or a server without CORS, is kept
out by the browser; the demo page keeps its strict Content-Security-Policy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.integration.browser import open_page

REPO_ROOT = Path(__file__).resolve().parents[2]
SNEAKER = REPO_ROOT / "examples" / "sneaker.png"
KEY = "browser-key-0123456789abcdef"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title></head>
<body><pre id="out">waiting</pre>
<script>
const API = %(api)s, KEY = %(key)s;
async function run() {
  const out = {};
  try {
    const image = await (await fetch("/sneaker.png")).blob();
    const form = new FormData();
    form.append("file", image, "sneaker.png");
    const v1 = await fetch(API + "/v1/classify?top_k=1", {method: "POST", body: form,
                                                          headers: {"X-API-Key": KEY, "X-Request-ID": "from-page-1"}});
    out.v1 = {status: v1.status, requestId: v1.headers.get("X-Request-ID"), body: await v1.json()};

    // V2 with the image as a binary tensor: JSON header, then the BYTES element (4-byte length prefix).
    const bytes = new Uint8Array(await image.arrayBuffer());
    const header = new TextEncoder().encode(JSON.stringify({inputs: [{name: "input", datatype: "BYTES", shape: [1],
      parameters: {binary_data_size: bytes.length + 4}}],
      outputs: [{name: "logits", parameters: {classification: 1, binary_data: true}}]}));
    const length = new Uint8Array(4);
    new DataView(length.buffer).setUint32(0, bytes.length, true);
    const v2 = await fetch(API + "/v2/models/fashion-mnist-resnet20/infer", {method: "POST",
      body: new Blob([header, length, bytes]),
      headers: {"Authorization": "Bearer " + KEY, "Inference-Header-Content-Length": String(header.length)}});
    // A binary answer: its JSON part is as long as the exposed header says, then the BYTES output.
    const jsonLength = Number(v2.headers.get("Inference-Header-Content-Length"));
    const answer = new Uint8Array(await v2.arrayBuffer());
    const top = new TextDecoder().decode(answer.slice(jsonLength + 4));
    out.v2 = {status: v2.status, jsonLength: jsonLength,
              body: JSON.parse(new TextDecoder().decode(answer.slice(0, jsonLength))), top: top};

    const refused = await fetch(API + "/v1/models", {headers: {"X-API-Key": "not-the-key"}});
    out.refused = {status: refused.status, requestId: refused.headers.get("X-Request-ID")};

    const limited = [];
    for (let i = 0; i < 3; i++) {
      const answer = await fetch(API + "/v1/models", {headers: {"X-API-Key": %(limited_key)s}});
      limited.push({status: answer.status, retryAfter: answer.headers.get("Retry-After")});
    }
    out.limited = limited;
  } catch (error) {
    out.error = String(error);
  }
  document.getElementById("out").textContent = JSON.stringify(out);
}
run();
</script></body></html>
"""
LIMITED_KEY = "limited-browser-key-0123456789"


class PageServer:
    """A page server on another port of the loopback (so another origin), serving the page and the sneaker; it
    listens from the start, so that its origin can go into the API server's flags, and serves the page once told
    where the API is."""

    def __init__(self) -> None:
        self.page = b""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body, kind = (owner.page, "text/html") if self.path == "/" else (SNEAKER.read_bytes(), "image/png")
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def serve(self, api: str) -> None:
        self.page = (
            PAGE % {"api": json.dumps(api), "key": json.dumps(KEY), "limited_key": json.dumps(LIMITED_KEY)}
        ).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


def keyed(start_server, tmp_path: Path, *flags: str):
    keys = tmp_path / "keys"
    keys.write_text(f"page:{KEY}\nlimited:{LIMITED_KEY} rate=1/hour\n")
    return start_server("--workers", "1", "--api-keys-file", str(keys), *flags).wait_ready()


def results_of(origin: str, api: str) -> dict:
    with open_page(origin) as browser:
        browser.open("/")
        expect(browser.page.locator("#out")).not_to_have_text("waiting")
        results = json.loads(browser.page.locator("#out").inner_text())
        # The page's own requests stay on its origin; the others go to the API only.
        assert all(url.startswith(api + "/") for url in browser.outside_requests), browser.outside_requests
        return results | {"console_errors": browser.console_errors}


def test_preflight_is_answered_before_the_key_check_with_the_needed_headers(start_server, tmp_path):
    server = keyed(start_server, tmp_path, "--cors-origins", "http://127.0.0.1:5173")
    preflight = httpx.options(
        server.url + "/v2/models/fashion-mnist-resnet20/infer",
        headers={
            "Origin": "http://127.0.0.1:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, inference-header-content-length, x-request-id",
        },
    )
    assert preflight.status_code == 200  # no key: a preflight carries none
    assert preflight.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert {"authorization", "x-api-key", "inference-header-content-length", "x-request-id"} <= {
        name.strip() for name in allowed.split(",")
    }
    refused = httpx.get(server.url + "/v1/models", headers={"Origin": "http://127.0.0.1:5173"})
    assert refused.status_code == 401  # the key check itself is unchanged, and its answer is readable
    assert refused.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    exposed = {name.strip().lower() for name in refused.headers["access-control-expose-headers"].split(",")}
    assert exposed == {"inference-header-content-length", "retry-after", "x-request-id"}
    other = httpx.options(
        server.url + "/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_the_demo_page_keeps_its_strict_content_security_policy(start_server, tmp_path):
    server = keyed(start_server, tmp_path, "--cors-origins", "*")
    policy = httpx.get(server.url + "/").headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy and "unsafe" not in policy


@pytest.mark.parametrize("listed", [True, False])
def test_a_page_on_another_origin_in_a_real_browser(start_server, tmp_path, page_server, listed):
    flags = ("--cors-origins", f"https://app.example.com,{page_server.origin}") if listed else ()
    server = keyed(start_server, tmp_path, *flags)
    page_server.serve(api=server.url)
    results = results_of(page_server.origin, server.url)
    if not listed:
        assert "Failed to fetch" in results.get("error", ""), results  # the browser kept the answer from the page
        assert any("blocked by CORS policy" in error for error in results["console_errors"]), results
        return
    assert "error" not in results, results
    assert results["v1"]["status"] == 200
    assert results["v1"]["requestId"] == "from-page-1"
    assert results["v1"]["body"]["results"][0]["top_k"][0]["label"] == "Sneaker"
    assert results["v2"]["status"] == 200 and results["v2"]["jsonLength"] > 0
    assert results["v2"]["body"]["outputs"][0]["parameters"]["binary_data_size"] > 0
    assert results["v2"]["top"].endswith(":7:Sneaker")
    assert results["refused"]["status"] == 401 and results["refused"]["requestId"]
    assert [answer["status"] for answer in results["limited"]] == [200, 429, 429]
    assert int(results["limited"][1]["retryAfter"]) >= 1
