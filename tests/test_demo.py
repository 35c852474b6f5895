"""demo.py: its functions on the fixture model, the page through Gradio's Python client, and in a headless Chromium."""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE, VCP_FIXTURE

import demo

IMAGES = sorted((FIXTURE / "data").glob("*/test/*/*.png"))
SCREENSHOT_ENV = "ZSAS_DEMO_SCREENSHOT"  # set to a path to keep the browser test's screenshot (assets/demo.png)


@pytest.fixture(scope="module")
def fixture_spec() -> demo.ModelSpec:
    return demo.spec_from_args(demo.build_parser().parse_args(["--demo_fixture", "--device", "cpu"]))


@pytest.fixture(scope="module")
def expected(fixture_spec) -> dict:
    """Scores of the first images straight from the runner: what every path through the page must show."""
    runner = demo.load_runner(fixture_spec)
    results, problems = demo.analyse(runner, demo.image_paths(IMAGES[:2]))
    assert not problems
    return {r.name: r.score for r in results}


def test_analyse_returns_the_runner_s_maps_and_scores(fixture_spec):
    runner = demo.load_runner(fixture_spec)
    assert demo.load_runner(fixture_spec) is runner  # loaded once
    items = demo.image_paths(IMAGES[:3])
    results, problems = demo.analyse(runner, items, batch_size=2)
    from deploy.image_io import read_image_array

    maps, scores = runner(np.stack([read_image_array(path, 126)[0] for path, _ in items]))
    assert not problems and [r.name for r in results] == [name for _, name in items]
    for result, anomaly_map, score in zip(results, maps, scores):
        np.testing.assert_allclose(result.anomaly_map, anomaly_map, atol=1e-6, rtol=0)  # batches of 2 vs 3
        assert result.score == result.raw_score == pytest.approx(float(score), abs=1e-6)
        assert result.image.shape == (126, 126, 3) and result.overlay_png.startswith(b"\x89PNG")


def test_mask_threshold_and_zip(fixture_spec):
    results, _ = demo.analyse(demo.load_runner(fixture_spec), demo.image_paths(IMAGES[:2]))
    first = results[0]
    threshold = float(np.median(first.anomaly_map))
    mask = demo.defect_mask(first.anomaly_map, threshold)
    assert 0.4 < mask.mean() < 0.6
    tinted = demo.mask_overlay(first.image, mask)
    assert (tinted[mask] != first.image[mask]).any() and (tinted[~mask] == first.image[~mask]).all()

    archive = zipfile.ZipFile(io.BytesIO(demo.results_zip(results, threshold)))
    names = {r.name for r in results}
    assert set(archive.namelist()) == {"scores.csv", *(f"overlays/{n}.png" for n in names),
                                       *(f"masks/{n}.png" for n in names)}
    rows = list(csv.DictReader(io.StringIO(archive.read("scores.csv").decode())))
    assert [row["name"] for row in rows] == [r.name for r in results]
    assert float(rows[0]["image_score"]) == pytest.approx(first.score, abs=1e-6)
    assert float(rows[0]["defect_area_percent"]) == pytest.approx(100 * mask.mean(), abs=0.01)
    from PIL import Image

    saved_mask = np.asarray(Image.open(io.BytesIO(archive.read(f"masks/{first.name}.png"))))
    np.testing.assert_array_equal(saved_mask > 0, mask)


def test_vcp_scores_are_normalised_over_the_images_analysed_together():
    spec = demo.spec_from_args(demo.build_parser().parse_args(["--demo_fixture", "--model", "vcp", "--device",
                                                              "cpu"]))
    runner = demo.load_runner(spec)
    images = sorted((VCP_FIXTURE / "data").glob("mvtec/*/test/*/*.bmp"))[:3]
    results, problems = demo.analyse(runner, demo.image_paths(images))
    assert not problems
    assert sorted(r.score for r in results)[0] == 0 and sorted(r.score for r in results)[-1] == 1
    assert len({r.raw_score for r in results}) == 3
    single, problems = demo.analyse(runner, demo.image_paths(images[:1]))
    assert np.isnan(single[0].score) and "undefined" in problems[0]
    assert "undefined" in demo.score_text(single[0], True) and "raw" in demo.score_text(single[0], True)


def test_folders_settings_and_missing_models_are_clear_errors(tmp_path):
    with pytest.raises(demo.DemoError, match="no images"):
        demo.image_paths([], "")
    with pytest.raises(demo.DemoError, match="not a folder"):
        demo.image_paths([], str(tmp_path / "missing"))
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(IMAGES[0], folder / "sub" / "a.png")
    shutil.copy(IMAGES[1], folder / "a.png")
    assert [name for _, name in demo.image_paths([IMAGES[2]], str(folder))] == [IMAGES[2].stem, "a", "sub/a"]
    assert demo.settings_from_text("vip2", demo.FIXTURE_SETTINGS) == {"image_size": 126,
                                                                      "features_list": [1, 2, 3, 4]}
    with pytest.raises(demo.DemoError, match="--alpha 0.3 is not a vip2 model flag"):
        demo.settings_from_text("vip2", "--alpha 0.3")
    with pytest.raises(demo.DemoError, match="no model yet"):
        demo.load_runner(demo.ModelSpec())


# ---------------------------------------------------------------- the served page

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(fixture_spec, tmp_path_factory):
    pytest.importorskip("gradio", reason="the demo needs gradio (pip install -r requirements-deploy.txt)")
    app = demo.build_app(fixture_spec, work_dir=str(tmp_path_factory.mktemp("demo")))
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                       ssr_mode=False, allowed_paths=[str(app.downloads_dir)])
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.mark.slow
def test_the_page_through_gradio_s_python_client(server, expected, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False, download_files=str(tmp_path))
    gallery, score, mask, table, download, status, = client.predict(
        files=[handle_file(str(p)) for p in IMAGES[:2]], folder="", api_name="/analyse")
    assert "ViP²-CLIP" in status and "126 px" in status
    assert len(gallery) == 2 and all(Path(item["image"]).is_file() for item in gallery)
    assert float(score) == pytest.approx(list(expected.values())[0], abs=1e-4)
    assert [row[0] for row in table["data"]] == list(expected)
    assert [row[1] for row in table["data"]] == pytest.approx(list(expected.values()), abs=1e-4)
    assert Path(mask).is_file()
    with zipfile.ZipFile(download) as archive:
        assert "scores.csv" in archive.namelist()

    # the slider changes the mask and the defect areas, not the scores (session state: same client)
    _, low_table, _ = client.predict(threshold=0.0, api_name="/threshold")
    assert [row[4] for row in low_table["data"]] == [100.0, 100.0]
    assert [row[1] for row in low_table["data"]] == [row[1] for row in table["data"]]


CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900")


@pytest.mark.slow
@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_the_page_in_a_headless_browser(server, expected):
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -r requirements-deploy.txt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="zsas_chromium_")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(server)
        wait = WebDriverWait(browser, 60)
        upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#images input[type=file]"))
        upload.send_keys("\n".join(str(p) for p in IMAGES[:2]))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#images .file-preview tr, #images .file")) >= 1
                   or "000.png" in b.find_element(By.ID, "images").text)
        time.sleep(1)  # the upload finishes server-side after the names show
        browser.find_element(By.ID, "analyse").click()
        score_box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#image-score textarea, #image-score input"))
        shown = wait.until(lambda b: score_box.get_attribute("value") or None)
        assert float(re.match(r"[-\d.]+", shown).group()) == pytest.approx(list(expected.values())[0], abs=1e-4)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#gallery img"))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#mask img"))
        screenshot = os.environ.get(SCREENSHOT_ENV)
        if screenshot:
            time.sleep(1)  # let the images finish drawing
            browser.set_window_size(1280, 1180)  # the whole page, the download box included
            time.sleep(1)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(Path(screenshot).resolve()))
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_demo_help_starts_without_a_model():
    from conftest import run_script

    result = run_script("demo.py", "--help")
    assert "--demo_fixture" in result.stdout and "--share" in result.stdout
