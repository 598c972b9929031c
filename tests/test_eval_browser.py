"""The eval HTML report in headless Chromium: the recall@K plot and the thumbnails render."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("playwright")

from mmsearch.datasets.captioned import write_coco_captions  # noqa: E402
from mmsearch.evaluation.inputs import read_captioned  # noqa: E402
from mmsearch.evaluation.report_html import write_html_report  # noqa: E402
from mmsearch.maintenance.evaluate import evaluate_captioned  # noqa: E402
from tests.conftest import FakeEncoder  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system chromium on PATH (apt-get install chromium)"
)


def test_report_shows_plot_and_thumbnails(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    data = read_captioned(write_coco_captions(tmp_path / "coco", n=20, seed=4))
    encoder = FakeEncoder(dim=16)  # weak on purpose: the report has poorly served queries to show
    report = evaluate_captioned(data, encoder.spec, encoder=encoder, worst=6)
    assert len(report.worst) == 6
    page_path = write_html_report(report, tmp_path / "report.html")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto(page_path.as_uri())
            page.wait_for_function(
                "() => [...document.images].length > 0 && [...document.images].every(i => i.complete)"
            )
            plot = page.eval_on_selector("#recall-plot", "e => [e.naturalWidth, e.naturalHeight]")
            assert plot[0] >= 400 and plot[1] >= 200
            widths = page.eval_on_selector_all("img.thumb", "els => els.map(e => e.naturalWidth)")
            assert len(widths) >= 6 and all(w > 0 for w in widths)
            assert page.locator("section.case").count() == 6
            assert page.locator("figure.hit, figure.miss").count() >= 6
            header = page.locator("table.figures th").all_inner_texts()
            assert "t2i_recall@1" in header and "i2t_recall@10" in header
            rows = page.locator("table.figures tbody tr td:first-child").all_inner_texts()
            assert rows == ["exact", "ann"]
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 20_000
            keep = Path("/tmp/i13-report.png")
            if keep.parent.is_dir() and "I13_KEEP_SHOT" in __import__("os").environ:
                shutil.copy(shot, keep)
        finally:
            browser.close()
