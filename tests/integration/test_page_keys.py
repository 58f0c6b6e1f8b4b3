"""The demo page against a server that requires API keys (`--api-keys-file`): a refused key is said in plain words,
and the right one, typed into the same field, classifies the image."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.integration.browser import open_page

SNEAKER = Path(__file__).resolve().parents[2] / "examples" / "sneaker.png"
GOOD_KEY = "page-test-key-0123456789abcdef"


def test_a_wrong_key_is_refused_in_plain_words_and_the_right_one_works(start_server, tmp_path):
    keys_file = tmp_path / "api-keys.txt"
    keys_file.write_text(GOOD_KEY + "\n")
    server = start_server("--api-keys-file", str(keys_file), "--no-access-log").wait_ready()
    with open_page(server.url) as browser:
        page = browser.page
        browser.open("/")
        page.fill("#api-key", "not-the-key")
        page.locator("#api-key").press("Tab")
        page.set_input_files("#file-input", str(SNEAKER))

        card = page.locator("#results .result")
        expect(card.locator(".error")).to_contain_text("The API key was refused")
        assert page.evaluate("sessionStorage.getItem('resnet-serve.api-key')") == "not-the-key"
        assert page.evaluate("localStorage.length") == 0

        page.fill("#api-key", GOOD_KEY)
        page.locator("#api-key").press("Tab")  # a changed key retries what was refused
        expect(card.locator(".score.top .label")).to_have_text("Sneaker")
        browser.assert_stayed_local_and_quiet(answered=(401,))  # answers the page explained
