"""`cnnlab lab` in a real browser: headless Chromium (Debian's package) driven by Selenium.

Starts ``cnnlab lab`` on a free port, uploads scikit-image's chelsea on the Classify page and expects a cat in the
top 3, then sizes the exercise network on the Budget page and expects 903,400 parameters, then picks a small run that
the engine trained here on the Runs page and sees its learning curves. It prints the seconds from
opening the lab to seeing the photo's Grad-CAM. ``CNNLAB_SCREENSHOTS=DIR`` also saves the pages' screenshots there
(the README's come from ``CNNLAB_SCREENSHOTS=docs``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
EXERCISE = "conv 100 k3 s2 same\nconv 200 k3 s2 same\nconv 400 k3 s2 same"

pytestmark = [
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason="no Chromium: apt-get install chromium chromium-driver (.ci/run does it where apt-get is available)",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
pytest.importorskip("gradio", reason="the lab extra: pip install 'cnnlab[lab]'")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the photos extra) ships the sample photo")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_a_small_run(runs: Path) -> None:
    """A real run folder (config.yaml, metrics, learning curves) from the engine: 4 epochs on separable toy data."""
    import torch
    from torch import nn

    from cnnlab.train import TrainConfig, Trainer

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (240,), generator=generator)
    images = torch.randn(240, 1, 8, 8, generator=generator)
    images[torch.arange(240), 0, labels, labels] += 3.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3))
    config = TrainConfig(epochs=4, batch_size=16, lr=0.05, optimizer="sgd", output=str(runs), task="toy",
                         name="small", progress=False, extra={"recipe": "toy"})  # fmt: skip
    Trainer(model, config).fit((images[:192], labels[:192]), (images[192:], labels[192:]))


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    runs = tmp_path_factory.mktemp("runs")
    _train_a_small_run(runs)
    log = (tmp_path_factory.mktemp("log") / "lab.log").open("w")
    command = [sys.executable, "-m", "cnnlab", "lab", "--runs", str(runs), "--port", str(port)]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"cnnlab lab did not start: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: object, seconds: float = 60) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.05)


def _open_tab(driver: object, name: str) -> None:
    tab = _wait(driver).until(
        lambda d: next((t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if name in t.text), None)
    )
    tab.click()


def _field(driver: object, elem_id: str) -> object:
    """The text box (an input or a textarea, whichever Gradio draws) inside the component `elem_id`."""
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")


def _screenshot(driver: object, name: str) -> None:
    folder = os.environ.get("CNNLAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_classify_a_photo_and_size_the_exercise_network(
    lab_url: str, browser: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    photo = tmp_path / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(photo)

    started = time.perf_counter()
    browser.get(lab_url)
    # the answer sheet is the first page; this runs root has none, so the page says how to write one
    _wait(browser).until(lambda d: "cnnlab answers --quick" in d.find_element(By.ID, "answers-sheet").text)
    _open_tab(browser, "Classify")
    upload = _wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, "#classify-upload input[type=file]"))
    upload.send_keys(str(photo))
    _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#classify-gradcam img"))
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nopen lab, upload photo, see Grad-CAM: {seconds:.2f} s")
    top = browser.find_elements(By.CSS_SELECTOR, "#classify-top [data-testid$='-confidence-set'] dt")
    names = [element.text for element in top]
    assert CATS & set(names[:3]), f"no cat class in the top 3: {names}"
    _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "img"))  # feature maps and filters drawn
    time.sleep(0.5)
    _screenshot(browser, "lab-classify.png")

    _open_tab(browser, "Budget")
    target = _wait(browser).until(lambda d: _field(d, "budget-target"))
    target.clear()
    target.send_keys(EXERCISE)
    shape = _field(browser, "budget-input")
    shape.clear()
    shape.send_keys("3x200x300")
    batch = _field(browser, "budget-batch")
    batch.send_keys(Keys.CONTROL, "a")
    batch.send_keys("50")
    memory = _field(browser, "budget-memory")
    memory.send_keys("8GiB")
    browser.find_element(By.ID, "budget-run").click()
    summary = _wait(browser).until(lambda d: _field(d, "budget-summary").get_attribute("value") or None)
    assert "parameters 903,400 " in summary
    _wait(browser).until(lambda d: "903,400" in d.find_element(By.ID, "budget-layers").text)
    time.sleep(0.5)
    _screenshot(browser, "lab-budget.png")

    _open_tab(browser, "Runs")
    _wait(browser).until(lambda d: "toy/small" in d.find_element(By.ID, "runs-table").text)
    assert _field(browser, "runs-choice").get_attribute("value") == "toy/small"  # the newest run, on show
    _wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-curves img"))
    time.sleep(0.5)
    _screenshot(browser, "lab-runs.png")
