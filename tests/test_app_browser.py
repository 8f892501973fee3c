"""The app in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): type, watch tokens stream,
switch tabs, compare, screenshot. Skips when Chromium or Playwright is missing.

Set APP_SCREENSHOT=docs/app.png to also save the Compare screenshot where the README shows it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytest.importorskip("gradio")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tiny_checkpoints import build_causal_lm, build_lora_adapter  # noqa: E402

from app.app import Limits, build_demo, launch_options, load_checkpoint, parse_args  # noqa: E402

# Records every distinct value a textarea shows, so the test can tell a stream from a single final update.
RECORD_VALUES = """(label) => {
    window.seenValues = [];
    const box = [...document.querySelectorAll('label')].find(l => l.innerText.trim().startsWith(label))
        .querySelector('textarea');
    setInterval(() => {
        const last = window.seenValues[window.seenValues.length - 1];
        if (box.value && box.value !== last) window.seenValues.push(box.value);
    }, 10);
}"""


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    pretrained = build_causal_lm(root / "pretrained")
    finetuned = build_lora_adapter(pretrained, root / "sft-lora")
    checkpoints = [load_checkpoint(str(pretrained)), load_checkpoint(str(finetuned))]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo(checkpoints, Limits(max_new_tokens=200))
    demo.launch(**launch_options(parse_args(["--port", str(port)])), prevent_thread_lock=True, quiet=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(app_url)
        yield page
        browser.close()


def test_prompt_streams_into_the_page(page):
    page.get_by_label("Prompt").first.fill("the cat sat on the mat")
    page.evaluate(RECORD_VALUES, "Continuation")
    page.get_by_role("button", name="Generate").first.click()
    page.get_by_text(" new tokens in ").first.wait_for()
    seen = page.evaluate("window.seenValues")
    assert len(seen) > 1, f"expected the text to grow in several steps, saw {len(seen)} value(s)"
    assert all(seen[-1].startswith(value) for value in seen)


def test_chat_tab_and_compare_tab(page, tmp_path):
    page.get_by_role("tab", name="sft-lora").click()
    chat_box = page.get_by_placeholder("Say something")
    chat_box.fill("the dog ran")
    chat_box.press("Enter")
    page.locator(".bot").first.wait_for()
    assert page.locator(".bot").first.inner_text().strip()

    page.get_by_role("tab", name="Compare").click()
    page.get_by_label("Input").last.fill("the cat sat on the mat")
    page.get_by_role("button", name="Compare").click()
    outputs = [page.get_by_label(name).last for name in ("pretrained", "sft-lora")]
    for output in outputs:  # each checkpoint's box fills on its own: wait for both, not for any two text boxes
        sync_api.expect(output).to_have_value(re.compile(r"\S"), timeout=60_000)
    screenshot = tmp_path / "compare.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("APP_SCREENSHOT"):
        shutil.copy(screenshot, REPO / os.environ["APP_SCREENSHOT"])
