"""The web gallery in a real browser: uvicorn on 127.0.0.1 + headless Chromium (Playwright).

Uses the real mmsearch-tiny model when its weights file is present (and loads), else
the fake encoder: the page's plumbing is what is under test, not retrieval quality.
Chromium is the system one (``shutil.which("chromium")``); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("playwright")

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.serve.app import ServerConfig, create_app  # noqa: E402
from tests.conftest import FakeEncoder  # noqa: E402
from tests.test_server import build_index, png_bytes, serve_in_thread  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY_WEIGHTS = (
    Path(__file__).resolve().parents[1]
    / "mmsearch"
    / "models"
    / "weights"
    / "mmsearch-tiny.safetensors"
)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system chromium on PATH (apt-get install chromium)"
)


def _encoder() -> tuple[Any, str]:
    """The real tiny model when its weights load, else the fake encoder; and which one."""
    if TINY_WEIGHTS.is_file():
        from mmsearch.errors import ModelLoadError
        from mmsearch.models import load_encoder
        from mmsearch.models.spec import ModelSpec

        try:
            return load_encoder(ModelSpec("mmsearch-tiny", ""), device="cpu"), "mmsearch-tiny"
        except ModelLoadError:
            pass
    return FakeEncoder(), "fake"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("browser")
    catalog = generate_catalog(base / "catalog", n=48, seed=5)
    encoder, which = _encoder()
    report = build_index(catalog, base / "idx", encoder)
    assert report.failed == 0
    app = create_app(ServerConfig(index_dir=base / "idx", encoder=encoder))
    with serve_in_thread(app) as url:
        yield {
            "url": url,
            "catalog": catalog,
            "base": base,
            "encoder": which,
            "encoder_obj": encoder,
        }


@pytest.fixture(scope="module")
def page(gallery: Any) -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def _search(page: Any, base_url: str, query: str, where: str = "", kind: str | None = None) -> None:
    page.goto(base_url + "/")
    page.fill("input[name=q]", query)
    page.fill("input[name=where]", where)
    if kind is not None:
        page.select_option("select[name=kind]", kind)
    page.click("button[type=submit]")


def _wait_for_results(page: Any) -> None:
    page.wait_for_function(
        "() => /results? .*in \\d+ ms/.test(document.getElementById('status').textContent)"
        " || document.getElementById('status').classList.contains('error')"
    )


def test_text_search_shows_cards_with_loaded_images_and_scores(page: Any, gallery: Any) -> None:
    _search(page, gallery["url"], "a red circle on the left")
    page.wait_for_selector("article.hit img")
    _wait_for_results(page)
    assert "error" not in (page.get_attribute("#status", "class") or "")
    cards = page.locator("article.hit")
    assert cards.count() == 24
    # The images in view really loaded (decoded with a width), not just got an <img> tag.
    page.wait_for_function(
        "() => [...document.querySelectorAll('article.hit img')].slice(0, 6)"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    widths = page.eval_on_selector_all(
        "article.hit img", "els => els.slice(0, 6).map(e => e.naturalWidth)"
    )
    assert len(widths) == 6 and all(w > 0 for w in widths)
    status = page.inner_text("#status")  # what ran, and what the scores are
    shown = re.search(r"· mode (\w+) · score (\w+)", status)
    assert shown and shown.group(1) in ("hybrid", "vector"), status
    assert shown.group(2) in ("relative", "cosine"), status
    scores = page.locator("article.hit .score").all_inner_texts()
    assert scores[0].startswith("#1") and all("·" in s for s in scores)
    values = [float(s.split("·")[1]) for s in scores]
    assert values == sorted(values, reverse=True)
    shot = gallery["base"] / "gallery.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000


def test_filter_limits_results(page: Any, gallery: Any) -> None:
    catalog = gallery["catalog"]
    cheap = sum(1 for r in catalog.rows if float(r["price"]) < 40)
    assert 0 < cheap < 24
    _search(page, gallery["url"], "a blue star", where="price < 40", kind="image")
    _wait_for_results(page)
    assert "error" not in (page.get_attribute("#status", "class") or "")
    metas = page.locator("article.hit .meta").all_inner_texts()
    assert len(metas) == cheap
    prices = [float(m.split("price: ")[1].split()[0]) for m in metas]
    assert all(p < 40 for p in prices)


def test_bad_filter_shows_an_error(page: Any, gallery: Any) -> None:
    _search(page, gallery["url"], "a blue star", where="price < cheap")
    page.wait_for_selector("#status.error")
    text = page.inner_text("#status")
    assert "price" in text and "number" in text
    assert page.locator("article.hit").count() == 0


def test_image_upload_search(page: Any, gallery: Any) -> None:
    catalog = gallery["catalog"]
    target = catalog.root / str(catalog.rows[2]["file"])
    upload = gallery["base"] / "query.png"
    upload.write_bytes(png_bytes(target))
    page.goto(gallery["url"] + "/")
    page.set_input_files("#upload", str(upload))
    page.wait_for_function(
        "() => /for image query\\.png/.test(document.getElementById('status').textContent)"
    )
    first = page.locator("article.hit img").first
    # The same image ranks first; the server shows paths relative to the indexed folder.
    assert first.get_attribute("title") == str(target.relative_to(catalog.image_dir))
    page.screenshot(path=str(gallery["base"] / "upload.png"))


def test_upload_of_a_non_image_shows_an_error(page: Any, gallery: Any) -> None:
    bogus = gallery["base"] / "notes.jpg"
    bogus.write_text("not a picture\n" * 50)
    page.goto(gallery["url"] + "/")
    page.set_input_files("#upload", str(bogus))
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status").strip() != ""


def test_search_url_is_a_link_that_restores_query_kind_and_filters(page: Any, gallery: Any) -> None:
    catalog = gallery["catalog"]
    cheap = sum(1 for r in catalog.rows if float(r["price"]) < 40)
    _search(page, gallery["url"], "a blue star", where="price < 40", kind="image")
    _wait_for_results(page)
    link = page.url
    assert "where=price" in link
    page.goto("about:blank")
    page.goto(link)  # opened afresh, as a shared link would be
    _wait_for_results(page)
    assert page.input_value("input[name=q]") == "a blue star"
    assert page.input_value("input[name=where]") == "price < 40"
    assert page.input_value("select[name=kind]") == "image"
    assert page.locator("article.hit").count() == cheap
    page.goto(gallery["url"] + "/?q=red&kind=any&where=price+%3C+40&where=price+%3E+0")
    _wait_for_results(page)
    assert page.input_value("select[name=kind]") == "any"
    assert page.input_value("input[name=where]") == "price < 40 and price > 0"


def test_token_sign_in_once_then_gallery_works(page: Any, gallery: Any) -> None:
    """With a token, the gallery asks for it once; the session cookie is HttpOnly and Strict."""
    token = "browser-test-token-0123456789"
    app = create_app(
        ServerConfig(index_dir=gallery["base"] / "idx", encoder=gallery["encoder_obj"], token=token)
    )
    with serve_in_thread(app) as url:
        page.goto(url + "/")
        assert page.locator("input[name=token]").count() == 1
        page.fill("input[name=token]", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector("p.error")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_selector("input[name=q]")
        _search(page, url, "a red circle")
        _wait_for_results(page)
        assert page.locator("article.hit").count() > 0
        assert page.evaluate("document.cookie") == ""  # HttpOnly: invisible to scripts
        cookie = next(c for c in page.context.cookies() if c["name"] == "mmsearch_session")
        assert (
            cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        )
        page.goto(url + "/")  # asked once: the cookie carries on
        assert page.locator("input[name=q]").count() == 1
        page.context.clear_cookies()
