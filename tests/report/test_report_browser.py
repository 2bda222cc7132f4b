"""The report in a real headless Chromium (Debian's chromium, driven over the DevTools protocol through a pipe):
no console error, every image decoded, typing in the class search filters the gallery, paging works, class names
stay text, and an interrupted run's page shows its notices. Skipped only where no chromium can be found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cdp_pipe import Browser, find_chromium
from PIL import Image
from runfolder import CLASS_NAMES, make_fake_run

from lossguided.report.html import ReportOptions, write_report

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not found (/usr/bin/chromium): `make browser` installs Debian's chromium"
)

CARDS = "Array.from(document.querySelectorAll('#gallery .card h3')).map(h => h.textContent)"
IMAGES = """(() => { const imgs = Array.from(document.images);
  return {n: imgs.length, bad: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)}; })()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Browser(CHROMIUM, tmp_path_factory.mktemp("chromium") / "profile") as b:
        b.open_page(width=1280, height=900)
        yield b


def open_report(browser: Browser, page: Path) -> None:
    browser.events.clear()
    browser.navigate(page.as_uri())


def search(browser: Browser, text: str) -> list[str]:
    browser.evaluate(
        "(() => { const s = document.getElementById('class-search'); s.value = '';"
        " s.dispatchEvent(new Event('input')); })()"
    )
    browser.type_text("#class-search", text)
    return browser.evaluate(CARDS)


def test_report_in_chromium(browser, tmp_path):
    run = make_fake_run(tmp_path, n_classes=60, per_class=4)
    page = tmp_path / "report.html"
    write_report(run["run"], page, ReportOptions(page_size=50))
    open_report(browser, page)

    images = browser.evaluate(IMAGES)
    assert images["n"] > 60 * 4 // 2 and images["bad"] == [], images  # figures + thumbnails all decoded
    names = run["table"].classes.names
    first_page = browser.evaluate(CARDS)
    assert len(first_page) == 50 and "of 60" in browser.evaluate("document.getElementById('page-info').textContent")

    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 900

    assert search(browser, "zo") == ["Zoë"]  # typed like a user: the input event filters the gallery
    assert search(browser, "BOLD") == ["Coat <b>bold</b> & co"]  # case-insensitive; the markup stays text
    assert browser.evaluate("document.querySelectorAll('#gallery b').length") == 0
    assert sorted(search(browser, "class-0001")) == sorted(n for n in names if "class-0001" in n)
    assert search(browser, "no such class") == []
    assert "no class matches" in browser.evaluate("document.getElementById('gallery').textContent")

    search(browser, "")
    browser.evaluate("document.getElementById('next-page').click()")
    second_page = browser.evaluate(CARDS)
    assert len(second_page) == 10 and not set(second_page) & set(first_page)
    assert set(first_page) | set(second_page) == set(names)

    browser.pump(0.3)
    assert browser.errors() == []


def test_interrupted_run_page_shows_its_notices(browser, tmp_path):
    run = make_fake_run(tmp_path, n_classes=len(CLASS_NAMES), per_class=3)["run"]
    (run / "metrics.json").unlink()
    (run / "refine1" / "done.json").unlink()
    shutil.rmtree(run / "refine1")
    page = tmp_path / "partial.html"
    summary = write_report(run, page)
    open_report(browser, page)
    shown = browser.evaluate(
        "Array.from(document.querySelectorAll('#notices .notice'))"
        ".filter(n => n.offsetHeight > 0).map(n => n.textContent)"
    )
    assert len(shown) == len(summary["notices"]) >= 3
    text = json.dumps(shown)
    assert "metrics.json missing" in text and "refine1 has not started" in text and "selected.csv missing" in text
    assert len(browser.evaluate(CARDS)) == len(CLASS_NAMES)  # the gallery still works, suspects only
    assert browser.evaluate(IMAGES)["bad"] == []
    browser.pump(0.3)
    assert browser.errors() == []
