"""End to end in headless Chromium: sign in, upload a photo, read the answer, enrol a landmark and see it recognised;
an admin approves a contributor's suggestion on the page. ``LANDMARKS_SCREENSHOTS=DIR`` keeps the screenshots."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest

from landmarks.serve.admin import create_token
from landmarks.serve.app import create_app
from tests_helpers import bearer, jpeg, photo_files, running_server, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(tiny_run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    tokens = {"admin": create_token(run, "admin", "Ada")[1], "contributor": create_token(run, "contributor", "Cy")[1]}
    with running_server(create_app(run, backend="torch")) as url:
        yield url, tokens


def screenshot(page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("LANDMARKS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def sign_in(page, token: str) -> None:
    page.fill("#token", token)
    page.click("#sign-in")
    wait_for(page, "document.getElementById('whoami').textContent.startsWith('Signed in')")


def test_upload_predict_enrol_and_recognise_in_chromium(server: tuple[str, dict], tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    server, tokens = server
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
        blocked = []  # the service's Content-Security-Policy must let the page's script and styles run
        page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
        page.goto(server + "/")
        page.wait_for_selector("#landmark-list li")
        assert page.locator("#landmark-list li").count() == 4
        assert "deleted" in page.text_content("#retention") and page.is_hidden("#review")
        sign_in(page, tokens["admin"])
        assert "Ada (admin)" in page.text_content("#whoami") and page.is_visible("#review")

        page.set_input_files("#file", str(red))
        wait_for(page, "document.getElementById('answer').textContent !== '—'")
        page.wait_for_selector("#bars .bar")
        assert page.locator("#bars .bar").count() >= 2
        first_answer = page.text_content("#answer")
        first_top = page.text_content("#bars .bar .label span")
        assert first_answer and first_top

        page.fill("#enrol-name", "Purple Palace")
        page.set_input_files("#enrol-files", enrol_photos)
        page.click("#enrol")
        wait_for(page, "document.getElementById('enrol-status').textContent.startsWith('Added')")
        assert "5 photos" in page.text_content("#enrol-status")

        page.set_input_files("#file", str(query))
        wait_for(page, "document.querySelector('#bars .bar .label span')?.textContent === 'Purple Palace'")
        page.click("#wrong")
        page.select_option("#correct-landmark", label="Purple Palace")
        page.click("#send-correction")
        wait_for(page, "document.getElementById('feedback-status').textContent.startsWith('Thanks')")
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
        wait_for(page, "(expected) => document.querySelector('#bars .bar .label span')?.textContent === expected",
                 arg=first_top)  # the top candidate was Purple Palace until the drop was recognised
        screenshot(page, tmp_path, "page.png")
        assert not blocked, blocked
        browser.close()


def test_an_admin_approves_a_contributors_suggestion_on_the_page(server: tuple[str, dict], tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    server, tokens = server
    suggested = httpx.post(server + "/landmarks", data={"name": "Purple Palace"}, files=photo_files((150, 20, 200), 2),
                           headers=bearer(tokens["contributor"]))
    assert suggested.json()["status"] == "pending"
    query = tmp_path / "purple-query.jpg"
    query.write_bytes(jpeg((150, 20, 200), seed=42))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(server + "/")
        page.wait_for_selector("#landmark-list li")
        sign_in(page, tokens["admin"])
        page.wait_for_selector("#suggestions-table tbody tr[data-suggestion-id]")
        rows = page.locator("#suggestions-table tbody tr[data-suggestion-id]")
        assert rows.count() == 2
        first = rows.nth(0)
        assert "Purple Palace (new landmark)" in first.text_content() and "Cy (token 2)" in first.text_content()
        wait_for(page, "document.querySelector('#suggestions-table img').naturalWidth > 0")  # the photo, fetched with the token
        screenshot(page, tmp_path, "review.png")
        first.locator("button.approve").click()
        wait_for(page, "document.getElementById('review-status').textContent.startsWith('Approved')")
        wait_for(page, "document.querySelectorAll('#suggestions-table tbody tr[data-suggestion-id]').length === 1")
        page.locator("#suggestions-table tbody tr[data-suggestion-id] button.reject").click()
        wait_for(page, "document.getElementById('review-status').textContent.startsWith('Rejected')")
        assert "Purple Palace" in page.text_content("#landmark-list")
        wait_for(page, "document.getElementById('audit-table').textContent.includes('reject')")  # refreshed after
        assert "approve" in page.text_content("#audit-table")
        page.set_input_files("#file", str(query))
        wait_for(page, "document.querySelector('#bars .bar .label span')?.textContent === 'Purple Palace'")
        screenshot(page, tmp_path, "approved.png")
        page.click("#sign-out")
        wait_for(page, "document.getElementById('whoami').textContent === 'Not signed in'")
        assert page.is_hidden("#review")
        browser.close()
    assert httpx.get(server + "/health").json()["pending_suggestions"] == 0
