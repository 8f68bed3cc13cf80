"""The demo in a real browser (Debian's chromium driven by Playwright): load an example image, choose
interactive, click a point on the image, run, and see the overlay and an instance row; then type a
generic request. Screenshots go to ``XSAM_SCREENSHOTS`` (default: the test's temporary folder);
``XSAM_DEMO_SCREENSHOT=docs/demo.png`` also writes the README's picture from this path.

Skipped only where no chromium is installed (``apt-get install chromium``); in CI (``XSAM_CI=1``) it
must run.
"""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("XSAM_CI"),
    reason="no chromium on PATH: apt-get install chromium (CI installs it and sets XSAM_CI=1)",
)
HEXAGON = (78, 115)  # image pixels of the large red hexagon in the bundled example 002201.jpg
IMAGE_SIZE = 256
TIMEOUT_MS = 90_000


@pytest.fixture
def page(demo_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(demo_url)
        page.wait_for_selector("#image canvas")
        yield page
        browser.close()


def screenshot(page, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("XSAM_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def image_rect(page) -> tuple[float, float, float]:
    """Where the editor shows the image: ``(left, top, scale)`` in page pixels, found in a screenshot
    of the canvas (the image is letterboxed and zoomed to fit)."""
    canvas = page.locator("#image canvas").first
    box = canvas.bounding_box()
    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    backdrop = shot[2, 2]
    differs = np.abs(shot - backdrop).sum(axis=2) > 30
    rows, columns = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    ratio = box["width"] / shot.shape[1]  # screenshot pixels to page pixels
    scale = (columns[-1] - columns[0] + 1) * ratio / IMAGE_SIZE
    return box["x"] + columns[0] * ratio, box["y"] + rows[0] * ratio, scale


def choose_task(page, name: str) -> None:
    page.click("#task input")
    page.get_by_role("option", name=name).click()


def run_and_wait(page, expected: str) -> str:
    """Press Run and wait until the status line says ``expected``; returns the status."""
    page.click("#run")
    page.wait_for_function(
        "expected => document.querySelector('#status').innerText.includes(expected)", arg=expected
    )
    return page.locator("#status").inner_text()


def wait_for_table(page, text: str) -> str:
    """The instance table's visible text once it shows ``text`` (it renders after the picture)."""
    page.wait_for_function("text => document.querySelector('#instances').innerText.includes(text)", arg=text)
    return page.locator("#instances").inner_text()


def test_interactive_click_then_a_typed_generic_request(page, tmp_path):
    page.locator("div.table", has_text="Grounded caption").first.click()  # an example without drawings
    page.wait_for_timeout(1500)
    choose_task(page, "Interactive")
    left, top, scale = image_rect(page)
    page.mouse.click(left + HEXAGON[0] * scale, top + HEXAGON[1] * scale)
    page.wait_for_timeout(500)
    screenshot(page, "demo-1-clicked", tmp_path)
    run_and_wait(page, "task: interactive · encoded the image")
    assert page.locator("#result img").count() == 1
    table = wait_for_table(page, "region 0")
    assert table.count("region ") == 1
    screenshot(page, "demo-2-interactive", tmp_path)

    page.click("#remove-drawings")
    choose_task(page, "Auto")
    page.fill("#prompt textarea", "ins: circle, square, star, hexagon; sem: sky, grass")
    status = run_and_wait(page, "task: generic (chosen from the prompt)")
    assert "reused the cached image encoding" in status
    assert "grass" in wait_for_table(page, "grass")
    screenshot(page, "demo-3-generic", tmp_path)
    target = os.environ.get("XSAM_DEMO_SCREENSHOT")
    if target:  # the README's picture: the top of the page (image, controls, answer)
        page.screenshot(path=target, clip={"x": 0, "y": 0, "width": 1400, "height": 1020})
