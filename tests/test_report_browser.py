"""The report of a real batch in a real browser (Debian's chromium, headless, over the DevTools
protocol): what the page shows after its scripts ran, that it asked for nothing over the network,
that no string from the run became markup, light and dark schemes, phone width, and a screenshot
that is not blank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_report import HOSTILE_ITEM, ITEMS, db_rows, run_batch

from helpers import ralph
from tests.support import png
from tests.support.chromium import Browser

pytestmark = pytest.mark.slow

# Collects every Content-Security-Policy violation (a request the page tried and the policy refused),
# installed before the page's own script runs.
WATCH = ("window.__blocked = []; document.addEventListener('securitypolicyviolation', "
         "function (e) { window.__blocked.push(e.blockedURI + ' ' + e.violatedDirective); });")

SHOWN = """JSON.stringify({
  ready: document.body.dataset.js,
  items: Array.from(document.querySelectorAll('#items tbody tr')).map(function (tr) {
    return {item: tr.dataset.item, bad: tr.classList.contains('bad'), text: tr.innerText}; }),
  sessions: Array.from(document.querySelectorAll('#sessions tr.session')).map(function (tr) {
    return tr.dataset.session; }),
  bars: Array.from(document.querySelectorAll('#gantt g.bar')).map(function (g) {
    var r = g.querySelector('rect.sess').getBBox(); return {status: g.dataset.status, w: r.width, h: r.height}; }),
  rowLabels: Array.from(document.querySelectorAll('#gantt g.row text')).map(function (t) { return t.textContent; }),
  times: Array.from(document.querySelectorAll('time[title]')).length,
  pwned: typeof window.pwned,
  blocked: window.__blocked,
  text: document.body.innerText,
  urls: Array.from(document.querySelectorAll('[src],[href]')).map(function (e) {
    return e.getAttribute('src') || e.getAttribute('href'); }),
  background: getComputedStyle(document.body).backgroundColor,
  overflow: document.documentElement.scrollWidth - window.innerWidth
})"""


def load(browser: Browser, url: str) -> dict:
    browser.page("Page.enable")
    browser.page("Network.enable")
    browser.page("Runtime.enable")
    browser.page("Page.addScriptToEvaluateOnNewDocument", source=WATCH)
    browser.load("Page.navigate", url=url)
    return json.loads(browser.evaluate(SHOWN))


def test_the_report_in_chromium(tmp_path: Path, isolated: Path) -> None:
    assert run_batch(tmp_path, ITEMS).returncode == 1
    out = ralph("report", "-o", "report.html")
    assert out.returncode == 0, out.stderr
    url = (tmp_path / "report.html").as_uri()
    sessions = [r["id"] for r in db_rows(isolated, "SELECT id FROM sessions ORDER BY started")]

    with Browser(tmp_path / "profile") as browser:
        shown = load(browser, url)
        # The script ran (times localised, the filter shown) and nothing from the run ran with it.
        assert shown["ready"] == "ready" and shown["times"] >= 2
        assert shown["pwned"] == "undefined"
        for n in (1, 3, 4):
            assert f"<script>window.pwned={n}</script>" in shown["text"]
        # Item rows, failed ones first; every session; one timeline bar per session, coloured by outcome.
        assert [i["item"] for i in shown["items"]][:2] == ["bad-2", HOSTILE_ITEM]
        assert [i["bad"] for i in shown["items"]] == [True, True, False, False]
        assert "max_iterations (2) reached" in shown["items"][0]["text"]
        assert sorted(shown["sessions"]) == sorted(sessions)
        assert len(shown["bars"]) == len(sessions) and all(b["w"] > 0 and b["h"] > 0 for b in shown["bars"])
        assert sorted(b["status"] for b in shown["bars"]) == ["complete", "complete", "failed", "failed", "failed",
                                                              "failed"]
        assert set(shown["rowLabels"]) >= {"good-1", "bad-2", HOSTILE_ITEM[:25] + "…"}
        # No request left the page: the only one is the page itself, nothing was refused by its policy,
        # and every link is a relative log path or an anchor.
        assert set(browser.requests()) == {url}, browser.requests()
        assert shown["blocked"] == []
        assert all(not u.startswith(("http:", "https:", "//")) for u in shown["urls"]), shown["urls"]

        shot = browser.screenshot()
        assert png.colours(shot) > 50  # text, badges and bars in several colours: not a blank page
        if os.environ.get("RALPH_REPORT_SCREENSHOT"):  # how docs/report.png is made
            Path(os.environ["RALPH_REPORT_SCREENSHOT"]).write_bytes(shot)

        # Dark scheme: the page follows the system's preference.
        light = shown["background"]
        browser.page("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
        dark = json.loads(browser.evaluate(SHOWN))["background"]
        assert light != dark
        assert sum(map(int, dark[dark.index("(") + 1:-1].split(",")[:3])) < 200, dark

        # JavaScript off: the tables are all there; only the filter (which needs the script) is not shown.
        browser.page("Emulation.setScriptExecutionDisabled", value=True)
        browser.load("Page.reload")
        plain = json.loads(browser.evaluate(SHOWN))
        assert plain.get("ready") is None and plain["times"] == 0  # the script did not run
        assert [i["item"] for i in plain["items"]] == [i["item"] for i in shown["items"]]
        assert sorted(plain["sessions"]) == sorted(sessions) and len(plain["bars"]) == len(sessions)
        assert browser.evaluate("getComputedStyle(document.getElementById('item-filter').parentNode).display") == "none"
        browser.page("Emulation.setScriptExecutionDisabled", value=False)

        # Phone width: the page itself does not scroll sideways (wide tables scroll in their own box).
        browser.page("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1, mobile=True)
        browser.load("Page.reload")
        phone = json.loads(browser.evaluate(SHOWN))
        assert phone["overflow"] <= 0, phone["overflow"]
        assert phone["ready"] == "ready" and len(phone["items"]) == 4
        assert png.colours(browser.screenshot()) > 20


def test_the_browser_harness_sees_a_request_and_a_refusal(tmp_path: Path) -> None:
    """The two checks above are not vacuous: a page that asks for an image is seen doing so, and
    the same page under the report's policy is seen being refused."""
    img = '<img src="http://127.0.0.1:9/x.png">'
    policy = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
              'script-src \'unsafe-inline\'">')
    (tmp_path / "open.html").write_text(f"<!doctype html><html><body>{img}</body></html>")
    (tmp_path / "closed.html").write_text(f"<!doctype html><html><head>{policy}</head><body>{img}</body></html>")
    for name, refused in (("open.html", []), ("closed.html", ["http://127.0.0.1:9/x.png img-src"])):
        with Browser(tmp_path / f"profile-{name}") as browser:
            shown = load(browser, (tmp_path / name).as_uri())
            assert "http://127.0.0.1:9/x.png" in browser.requests()
            assert shown["blocked"] == refused
