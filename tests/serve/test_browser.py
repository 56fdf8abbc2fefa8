"""End to end in headless Chromium: upload a photo, read the answer, enrol a landmark and see it recognised."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve.test_app import jpeg

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(tiny_run_dir: Path, tmp_path: Path):
    import uvicorn

    from landmarks.serve.app import create_app

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run, backend="torch"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_upload_predict_enrol_and_recognise_in_chromium(server: str, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    red = tmp_path / "red.jpg"
    red.write_bytes(jpeg((220, 30, 30), seed=3))
    enrol_photos = []
    for i in range(5):
        path = tmp_path / f"purple{i}.jpg"
        path.write_bytes(jpeg((150, 20, 200), seed=i))
        enrol_photos.append(str(path))
    query = tmp_path / "purple-query.jpg"
    query.write_bytes(jpeg((150, 20, 200), seed=42))

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page()
        page.goto(server + "/")
        page.wait_for_selector("#landmark-list li")
        assert page.locator("#landmark-list li").count() == 4

        page.set_input_files("#file", str(red))
        page.wait_for_function("document.getElementById('answer').textContent !== '—'")
        page.wait_for_selector("#bars .bar")
        assert page.locator("#bars .bar").count() >= 2
        first_answer = page.text_content("#answer")
        first_top = page.text_content("#bars .bar .label span")
        assert first_answer and first_top

        page.fill("#enrol-name", "Purple Palace")
        page.set_input_files("#enrol-files", enrol_photos)
        page.click("#enrol")
        page.wait_for_function("document.getElementById('enrol-status').textContent.startsWith('Added')")
        assert "5 photos" in page.text_content("#enrol-status")

        page.set_input_files("#file", str(query))
        page.wait_for_function("document.querySelector('#bars .bar .label span')?.textContent === 'Purple Palace'")
        page.click("#wrong")
        page.select_option("#correct-landmark", label="Purple Palace")
        page.click("#send-correction")
        page.wait_for_function("document.getElementById('feedback-status').textContent.startsWith('Thanks')")
        assert httpx.get(server + "/health").json()["feedback"] == 1

        page.evaluate(  # drag and drop the first photo again onto the drop zone
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
                document.getElementById('drop').dispatchEvent(
                    new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }""",
            base64.b64encode(red.read_bytes()).decode(),
        )
        page.wait_for_function("(expected) => document.querySelector('#bars .bar .label span')?.textContent === expected",
                               arg=first_top)  # the top candidate was Purple Palace until the drop was recognised
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
