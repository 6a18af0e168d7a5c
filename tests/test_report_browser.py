"""The report page in a real headless browser (Chromium through Playwright): it renders
without console errors, makes no network request, runs no script a user supplied; a
screenshot of the top of the page is kept (``$CAPTUM_MAMBA_TEST_ARTEFACTS``, else the
test's temporary folder).

Needs ``pip install playwright`` (the ``browser`` extra) and a Chromium: the operating
system's (``apt-get install -y chromium``; found on the PATH or at
``$CAPTUM_MAMBA_CHROMIUM``) or Playwright's own (``playwright install chromium``). Without
them the tests skip with the reason, except under ``CAPTUM_MAMBA_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs both), where they fail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from report_helpers import FEMALE, MALE, metaspace_tokenizer, reviews, train_tiny, xss_report

from captum_mamba.apps.report import ReportOptions, explain_dataset
from captum_mamba.apps.sentiment import from_classifier

REQUIRED = os.environ.get("CAPTUM_MAMBA_REQUIRE_BROWSER") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail where the browser is required (CI)."""
    if REQUIRED:
        pytest.fail(f"CAPTUM_MAMBA_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason, allow_module_level=True)


pytest.importorskip("pyarrow", reason="the report writes Parquet relevances (the [parquet] extra)")
try:
    from playwright import sync_api
except ImportError:
    skip_or_fail("the browser test needs playwright (pip install playwright)")


def chromium() -> str | None:
    """The system's Chromium: ``$CAPTUM_MAMBA_CHROMIUM``, else on the PATH (None: use
    Playwright's own browser, if installed)."""
    given = os.environ.get("CAPTUM_MAMBA_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def artefacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CAPTUM_MAMBA_TEST_ARTEFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(path: Path, screenshot: Path | None = None) -> dict:
    """Load a page; return its console messages, page errors, requests, dialogs and
    what the page's own DOM says (scripts, event-handler attributes, a planted flag)."""
    seen: dict = {"console": [], "errors": [], "requests": [], "dialogs": []}
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"]
            )
        except Exception as error:  # no browser at all: say so and how to get one
            skip_or_fail(
                f"no Chromium to run ({str(error).splitlines()[0]}); apt-get install -y "
                f"chromium, or playwright install chromium"
            )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: seen["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_timeout(300)
            seen["scripts"] = page.evaluate("document.querySelectorAll('script').length")
            seen["handlers"] = page.evaluate(
                "Array.from(document.querySelectorAll('*')).filter(e => Array.from(e.attributes)"
                ".some(a => a.name.startsWith('on'))).length"
            )
            seen["pwned"] = page.evaluate("window.__pwned === undefined ? null : window.__pwned")
            seen["headings"] = page.evaluate(
                "Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
            )
            seen["text"] = page.evaluate("document.body.innerText")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    seen["other_requests"] = [url for url in seen["requests"] if url != path.as_uri()]
    return seen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_page_renders_offline_without_errors(tmp_path) -> None:
    train = reviews(200, seed=0, planted=True, gender_bias=0.9)
    test = reviews(40, seed=1, planted=True, gender_bias=0.5)
    classifier = train_tiny(train, metaspace_tokenizer([e.text for e in train + test]))
    report = explain_dataset(
        from_classifier(classifier, "planted.ckpt"),
        [e.text for e in test],
        tmp_path / "report",
        labels=[e.label for e in test],
        groups={"female": FEMALE, "male": MALE},
        options=ReportOptions(trust_examples=4, bootstrap=20),
        progress=False,
    )
    screenshot = artefacts(tmp_path) / "report-top.png"
    seen = open_page(report.directory / "report.html", screenshot)
    assert seen["console"] == [] and seen["errors"] == []
    assert seen["other_requests"] == []
    assert seen["scripts"] == 0 and seen["handlers"] == 0
    assert [h.split(". ", 1)[0] for h in seen["headings"]] == [str(i) for i in range(1, 10)]
    assert screenshot.stat().st_size > 10_000


def test_no_script_a_user_supplies_runs(tmp_path) -> None:
    report = xss_report(tmp_path)
    seen = open_page(report.directory / "report.html", artefacts(tmp_path) / "report-xss.png")
    assert seen["pwned"] is None and seen["dialogs"] == []
    assert seen["scripts"] == 0 and seen["handlers"] == 0
    assert seen["other_requests"] == []  # an <img src=x> that got through would load x
    assert seen["errors"] == [] and seen["console"] == []
    # the payload is shown as text
    assert "<script>window.__pwned=1</script>" in seen["text"]
