"""The live page in headless Chromium with a fake camera made of real photos: it names the landmark, says "no known
landmark" for photos of none, opens the info card, and works again offline from its service worker's cache.

Needs landmarks-mini (LANDMARKS_DATA) and the non-landmark photos beside it (or LANDMARKS_NON_LANDMARKS); trains a
baseline-knn run (ImageNet Lite0 features, no training: ~40 s) unless LANDMARKS_LIVE_RUN names one that knows
landmarks-mini and has model.int8.onnx.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from landmarks.config import load_config
from landmarks.data.catalog import NO_LANDMARK_NAME, read_catalog
from landmarks.data.images import decode_image
from landmarks.export.onnx import export_onnx, quantize_int8
from landmarks.export.web import recognizer_prototypes, runtime_dir
from landmarks.run_folder import RunFolder
from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.app import create_app
from landmarks.train.run import train
from tests_helpers import running_server, wait_for, with_prototypes, write_y4m

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
              pytest.mark.skipif(runtime_dir() is None, reason="ONNX Runtime Web is not installed (make web)")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
         "--use-fake-ui-for-media-stream"]
SAMPLES = 10


def live_run(data: Path, out: Path) -> Path:
    """A baseline-knn run of landmarks-mini with an int8 model (or LANDMARKS_LIVE_RUN)."""
    given = os.environ.get("LANDMARKS_LIVE_RUN")
    if given:
        return Path(given)
    run = train(load_config("baseline-knn"), data, out)  # calibrated after training: the threshold for 95 % precision
    model = RunFolder(run).load_model()
    export_onnx(model, run / "model.onnx")
    train_photos = read_catalog(data).frame["path"].tolist()[::40]
    quantize_int8(run / "model.onnx", run / "model.int8.onnx", np.stack([decode_image(p, 224) for p in train_photos]))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    value = os.environ.get("LANDMARKS_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("LANDMARKS_DATA is not set to the landmarks-mini folder")
    source = live_run(Path(value), tmp_path_factory.mktemp("live") / "run")
    copy = tmp_path_factory.mktemp("live-copy") / "run"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("store.sqlite*", "feedback.sqlite*", "checkpoints"))
    return copy


@pytest.fixture(scope="module")
def server(run_dir: Path):
    with running_server(create_app(run_dir)) as url:
        yield url


def best_recognised_landmark(run_dir: Path, data: Path) -> tuple[int, str, list[str]]:
    """The landmark whose test photos the device (int8 model, prototypes) recognises with the widest margin."""
    recognizer = Recognizer.load(run_dir)
    device = with_prototypes(recognizer, *recognizer_prototypes(recognizer))
    test = read_catalog(data, "test").frame
    test = test[test["landmark_id"] >= 0]
    predictions, _ = device.predict_paths(test["path"].tolist())
    test = test.assign(right=[p.known and p.landmark_id == l for p, l in zip(predictions, test["landmark_id"])],
                       confidence=[p.confidence for p in predictions])
    summary = test.groupby("landmark_id").agg(photos=("right", "size"), right=("right", "all"), low=("confidence", "min"))
    summary = summary[(summary["photos"] >= 3) & summary["right"]].sort_values("low", ascending=False)
    assert len(summary), "the device recognises no landmark of the test set on all its photos"
    landmark_id = int(summary.index[0])
    return landmark_id, recognizer.name_of(landmark_id), test[test["landmark_id"] == landmark_id]["path"].tolist()


def answers_after_warm_up(page, frames: int = 20) -> list[str]:
    """#live-answer sampled SAMPLES times, 0.3 s apart, once the page has answered ``frames`` frames."""
    wait_for(page, f"window.liveStats && window.liveStats.frames >= {frames}", timeout_s=120)
    samples = []
    for _ in range(SAMPLES):
        samples.append(page.text_content("#live-answer"))
        time.sleep(0.3)
    return samples


def launch(playwright, clip: Path):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"])


def test_live_page_names_the_landmark_and_works_offline(server: str, run_dir: Path, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    data = Path(os.environ["LANDMARKS_DATA"])
    landmark_id, name, photos = best_recognised_landmark(run_dir, data)
    clip = write_y4m([Path(p) for p in photos], tmp_path / "landmark.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright, clip)
        landmarks = {l["landmark_id"]: l for l in httpx.get(server + "/live/landmarks.json").json()}
        place = landmarks[landmark_id]
        near = {"latitude": place.get("latitude", 0.0) + 0.01, "longitude": place.get("longitude", 0.0)}  # ~1.1 km
        context = browser.new_context(geolocation=near, permissions=["geolocation"])
        page = context.new_page()
        blocked = []  # the service's Content-Security-Policy must let the page, its worker and the wasm run
        page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
        response = page.goto(server + "/live")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        samples = answers_after_warm_up(page)
        assert not blocked, blocked
        assert sum(s == name for s in samples) >= SAMPLES - 2, samples
        stats = page.evaluate("window.liveStats")
        assert stats["error"] is None and stats["backend"] in ("wasm", "webgpu") and stats["fps"] > 0

        page.click("#live-label")  # the info card of the landmark on screen
        page.wait_for_selector("#info-card:not([hidden])")
        assert page.text_content("#info-name") == name
        if place.get("url"):
            assert page.get_attribute("#info-link", "href") == place["url"]
        if "latitude" in place:  # the user shares the location: the card says how far the landmark is
            page.click("#share-location")
            page.wait_for_selector("#info-distance:not([hidden])")
            assert page.text_content("#info-distance") in ("1.1 km from you", "1.0 km from you")
        page.click("#ask-server")  # the one way a frame leaves the device
        wait_for(page, "document.getElementById('server-answer').textContent.startsWith('The server says')")
        page.screenshot(path=str(os.environ.get("LIVE_SCREENSHOT") or tmp_path / "live.png"), full_page=True)

        # the service worker has cached the bundle once it controls the page: reload without the network
        wait_for(page, "navigator.serviceWorker.controller !== null", timeout_s=60)
        context.set_offline(True)
        page.reload()
        samples = answers_after_warm_up(page, frames=10)
        assert sum(s == name for s in samples) >= SAMPLES - 2, samples
        browser.close()


def test_live_page_says_no_known_landmark_for_other_photos(server: str, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    folder = Path(os.environ.get("LANDMARKS_NON_LANDMARKS") or Path(os.environ["LANDMARKS_DATA"]).parent / "non-landmarks")
    if not folder.is_dir():
        pytest.skip(f"no non-landmark photos at {folder} (set LANDMARKS_NON_LANDMARKS)")
    photos = sorted(folder.glob("*.jpg"))[:8]
    clip = write_y4m(photos, tmp_path / "none.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright, clip)
        page = browser.new_page()
        page.goto(server + "/live/")
        samples = answers_after_warm_up(page)
        assert sum(s == NO_LANDMARK_NAME for s in samples) >= SAMPLES - 2, samples
        browser.close()
