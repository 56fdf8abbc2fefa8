"""`/live` runs a ViT-S int8 model in headless Chromium: a full-depth ViT-S/14 (random weights, no network) with a
glr head trained on the tiny colour photos, exported to int8 (22.5 MB, under the bundle's 40 MB limit), names the
landmark of a fake-camera clip made of its photos, on ONNX Runtime Web."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from landmarks.cli import main
from landmarks.data.catalog import read_catalog
from landmarks.export.web import DEVICE_MODEL_LIMIT_BYTES, recognizer_prototypes, runtime_dir
from landmarks.recognize.recognizer import Recognizer
from landmarks.serve.app import create_app
from tests_helpers import build_tiny_gldv2, running_server, wait_for, with_prototypes, write_y4m

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
              pytest.mark.skipif(runtime_dir() is None, reason="ONNX Runtime Web is not installed (make web)")]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
         "--use-fake-ui-for-media-stream"]
SAMPLES = 10


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("live-vit")
    data = build_tiny_gldv2(root / "gld")
    run = root / "run"
    assert main(["-q", "train", "--data", str(data), "--config", "glr", "--out", str(run),
                 "model.backbone=vit_small_patch14_dinov2", "model.pretrained=none", "data.image_size_px=56",
                 "model.descriptor_stage=8", "train.epochs=2", "train.feature_views=1", "train.workers=0",
                 f"data.cache_dir={root / 'cache'}"]) == 0
    assert main(["-q", "export", str(run), "--quantize", "int8"]) == 0
    return run, data


def test_live_runs_a_vit_s_int8_model(vit_run: tuple[Path, Path], tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    run, data = vit_run
    size = (run / "model.int8.onnx").stat().st_size
    assert 15e6 < size < DEVICE_MODEL_LIMIT_BYTES  # ViT-S/14 int8: ~22.5 MB, it fits
    recognizer = Recognizer.load(run)
    device = with_prototypes(recognizer, *recognizer_prototypes(recognizer))
    train_photos = read_catalog(data).frame
    photos = train_photos[train_photos["landmark_id"] == 7]["path"].tolist()
    predictions, _ = device.predict_paths(photos)
    assert all(p.known and p.landmark_id == 7 for p in predictions), [(p.landmark_id, p.confidence) for p in predictions]
    clip = write_y4m([Path(p) for p in photos], tmp_path / "red.y4m")
    with running_server(create_app(run)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"])
        page = browser.new_page()
        page.goto(url + "/live/")
        wait_for(page, "window.liveStats && window.liveStats.frames >= 10", timeout_s=180)
        samples = []
        for _ in range(SAMPLES):
            samples.append(page.text_content("#live-answer"))
            time.sleep(0.3)
        stats = page.evaluate("window.liveStats")
        browser.close()
    assert stats["error"] is None and stats["backend"] in ("wasm", "webgpu") and stats["fps"] > 0
    # Camera frames are re-encoded photos and the random ViT's margin is thin: some frames may fall below the
    # threshold, but no other landmark is ever named and most frames name the right one.
    assert all(s in (recognizer.name_of(7), "no known landmark") for s in samples), samples
    assert sum(s == recognizer.name_of(7) for s in samples) > SAMPLES // 2, samples
