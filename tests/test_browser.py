"""The rendered book as a reader meets it: every page in headless Chromium, offline.

The book is built as `make book` builds it, served from 127.0.0.1, and every
page is opened in Debian's Chromium (driven by Playwright with the system
browser) while the network is closed, as it is for a reader on a train. A page
fails, naming the page and the reason, on: a JavaScript error from the site's
own scripts; a failed request to 127.0.0.1; a request to another host that is
not in EXTERNAL (those fail here by design, so each must be one the page reads
fine without); an image or video that does not load; raw TeX left in the
visible text after MathJax ran; no title; a code cell wider than its column at
1280 px; a solution that shows before it is clicked or stays hidden after; an
animation that does not play once it is on screen. Each chapter needs a figure.
The search page must find "Jacobian", with its quoted maths typeset. A
full-page screenshot of every page and a report (report.json: external
requests, the code column measured) go to FOMM_BROWSER_OUT (default
_build/browser/); FOMM_BOOK_HTML points the test at a build that exists already.

Chromium and Playwright are installed by `make test` (Makefile `browser`
target, the `test` extra); without them, or without Jupyter Book, this test
skips, except under CI, where it fails.
"""

import asyncio
import functools
import http.server
import json
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import ROOT, toc_notebooks

CHROMIUM = os.environ.get("FOMM_CHROMIUM", "/usr/bin/chromium")
OUT = Path(os.environ.get("FOMM_BROWSER_OUT", ROOT / "_build" / "browser"))
WIDTH, HEIGHT = 1280, 900
CODE_COLUMNS = 88  # the chapters' limit on code lines (tests/test_book.py checks the source)
# Pages open this many at a time, each in a tab of its own: a page's time is mostly waiting (fonts,
# MathJax's typesetting, the videos' first frames, the screenshot), which tabs do side by side.
# Playwright turns Chromium's throttling of background tabs off, so every tab runs at full speed.
TABS_AT_ONCE = 4
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]

# Requests to other hosts fail here by design. Each one a page may make is listed with
# what the page loses without it; a request to anything else fails the test.
EXTERNAL = {
    "https://colab.research.google.com/assets/colab-badge.svg":
        "the Open in Colab badge picture; its link and its alt text stay",
}

# Runs in the page once it has loaded: waits for MathJax and the videos, then reports.
INSPECT = """async () => {
  const report = {problems: []};
  const problem = (text) => report.problems.push(text);
  for (const img of document.images) { img.loading = "eager"; }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  } else if (document.querySelector(".math")) {
    problem("the page has math but MathJax did not start");
  }
  const videos = Array.from(document.querySelectorAll("video"));
  await Promise.all(videos.map((video) => new Promise((resolve) => {
    if (video.readyState >= 1 || video.error) { resolve(); return; }
    video.addEventListener("loadedmetadata", resolve, {once: true});
    video.addEventListener("error", resolve, {once: true});
    setTimeout(resolve, 60000);
  })));
  await Promise.all(Array.from(document.images).map((img) =>
    img.complete ? null : new Promise((resolve) => {
      img.addEventListener("load", resolve, {once: true});
      img.addEventListener("error", resolve, {once: true});
      setTimeout(resolve, 60000);
    })));
  const local = (url) => url.startsWith("data:") || new URL(url, location.href).host === location.host;
  report.images = Array.from(document.images).map((img) =>
    ({src: img.currentSrc.slice(0, 120), local: local(img.currentSrc), width: img.naturalWidth}));
  // An animation plays by itself (muted autoplay) once it is on screen: its clock must move.
  for (const video of videos) {
    video.scrollIntoView({block: "center"});
    for (let k = 0; k < 100 && video.autoplay && !video.error && !(video.currentTime > 0); k++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  window.scrollTo(0, 0);
  report.videos = videos.map((video) => ({width: video.videoWidth, duration: video.duration,
                                          playing: video.currentTime > 0,
                                          error: video.error ? video.error.code : null}));
  // Visible text outside code, scripts and typeset math must hold no TeX delimiters.
  const skip = "script, style, pre, code, textarea, mjx-container, .MathJax, mjx-assistive-mml";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip) || !parent.offsetParent) { continue; }
    const found = node.textContent.match(/\\\\\\(|\\\\\\)|\\\\\\[|\\\\\\]|\\$\\$|\\\\begin\\{/);
    if (found) { raw.push(node.textContent.trim().slice(0, 80)); }
  }
  report.raw_tex = raw;
  report.math_errors = document.querySelectorAll("mjx-merror").length;
  report.typeset = document.querySelectorAll("mjx-container").length;
  report.title = document.title;
  report.h1 = Array.from(document.querySelectorAll("h1")).map((h) => h.textContent.trim());
  report.figures = report.images.filter((i) => i.local && i.width > 0 &&
                                        !i.src.includes("_static/")).length
                   + videos.filter((v) => v.videoWidth > 0).length;
  report.solutions = document.querySelectorAll("div.solution").length;
  return report;
}"""

# The search is over, each result's quoted summary has arrived (a result with a description
# gets none), and _static/search-math.js has typeset all of it (data-fomm-math="done").
SEARCH_SETTLED = """() => {
  const results = document.getElementById("search-results");
  const items = Array.from(document.querySelectorAll("#search-results ul.search li"));
  const status = document.querySelector("#search-results p.search-summary");
  return status !== null && status.innerText.startsWith("Search finished")
         && items.every((li) => li.querySelector(":scope > span, :scope > p.context"))
         && results.dataset.fommMath === "done";
}"""

# Code cells, solutions opened: none may scroll sideways; the narrowest column is measured.
CODE_WIDTH = """() => {
  document.querySelectorAll("details.hide").forEach((details) => { details.open = true; });
  const cells = Array.from(document.querySelectorAll("div.cell_input pre"));
  const longest = (pre) => pre.textContent.split("\\n").reduce((a, b) => (a.length >= b.length ? a : b));
  const report = {code_cells: cells.length,
                  too_wide: cells.filter((pre) => pre.scrollWidth > pre.clientWidth + 1)
                                 .map((pre) => longest(pre).slice(0, 100))};
  for (const pre of cells) {
    const style = getComputedStyle(pre);
    const probe = document.createElement("span");
    probe.textContent = "x".repeat(200);
    pre.appendChild(probe);
    const char = probe.getBoundingClientRect().width / 200;
    probe.remove();
    const inner = pre.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const columns = Math.floor(inner / char + 1e-6);
    if (report.columns === undefined || columns < report.columns) {
      report.columns = columns;
      report.code_font = style.fontSize + " " + style.fontFamily.split(",")[0];
    }
  }
  return report;
}"""

# Every solution starts folded; one click on its button shows it.
SOLUTIONS = """async () => {
  const hidden = (el) => !el.offsetParent || el.getBoundingClientRect().height === 0;
  const problems = [];
  const solutions = Array.from(document.querySelectorAll("div.solution"));
  for (const [k, solution] of solutions.entries()) {
    const body = solution.querySelector("section, .cell");
    const name = solution.querySelector(".admonition-title")?.textContent.trim() || `solution ${k + 1}`;
    if (!solution.classList.contains("dropdown")) { problems.push(`${name}: not a dropdown`); continue; }
    if (!body) { problems.push(`${name}: empty`); continue; }
    if (!hidden(body)) { problems.push(`${name}: shown before it is clicked`); continue; }
    const button = solution.querySelector("button.toggle-button");
    if (!button) { problems.push(`${name}: no button to open it`); continue; }
    button.click();
    await new Promise((resolve) => setTimeout(resolve, 400));
    if (hidden(body)) { problems.push(`${name}: still hidden after a click`); }
    if (!solution.querySelector("div.cell_input pre")) { problems.push(`${name}: holds no code cell`); }
  }
  return problems;
}"""


JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"


def _browser_or_skip():
    """(async_playwright, chromium path), or a skip (a failure under CI) saying what is missing."""
    missing = []
    if not JUPYTER_BOOK.exists() and not os.environ.get("FOMM_BOOK_HTML"):
        missing.append(f"Jupyter Book at {JUPYTER_BOOK} (the `book` extra)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None
        missing.append("Playwright for Python (the `test` extra)")
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM} (Debian package chromium; `make browser` installs it)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return async_playwright, CHROMIUM


@pytest.fixture(scope="module")
def site(request):
    """The book built as `make book` builds it, served on 127.0.0.1: (base URL, html folder).

    FOMM_BOOK_HTML names an html folder built already, to look at it again without a build;
    otherwise the session's one build (conftest's ``built_book``, shared with test_book) is used.
    """
    _browser_or_skip()  # before the build, which takes a while
    if os.environ.get("FOMM_BOOK_HTML"):
        html = Path(os.environ["FOMM_BOOK_HTML"])
    else:
        result, html = request.getfixturevalue("built_book")
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", html
    server.shutdown()
    server.server_close()


def _pages(html):
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not p.relative_to(html).parts[0].startswith("_"))


async def _check_page(page, base, name, chapters, external, problems, out):
    own = urlsplit(base).netloc
    events = []

    def on_request(request):
        url = request.url
        if url.startswith(("data:", "blob:", "about:")) or urlsplit(url).netloc == own:
            return
        external.setdefault(url, set()).add(name)
        if url not in EXTERNAL:
            events.append(f"asks another host for {url[:120]} (not in EXTERNAL)")

    def on_failed(request):
        if urlsplit(request.url).netloc == own:
            events.append(f"request failed: {request.url} ({request.failure})")

    def on_response(response):
        if urlsplit(response.url).netloc == own and response.status >= 400:
            events.append(f"HTTP {response.status} for {response.url}")

    def on_console(message):
        location = message.location.get("url", "") if message.location else ""
        if message.type == "error" and (not location or urlsplit(location).netloc == own):
            events.append(f"console error: {message.text[:200]} at {location}")

    def on_error(error):
        events.append(f"JavaScript error: {error}")

    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    page.on("console", on_console)
    page.on("pageerror", on_error)
    await page.goto(base + name, wait_until="load", timeout=180000)
    report = await page.evaluate(INSPECT)
    if report["solutions"]:
        report["problems"] += await page.evaluate(SOLUTIONS)
    report.update(await page.evaluate(CODE_WIDTH))
    await page.wait_for_timeout(300)  # let late console messages arrive
    shot = out / (name.replace("/", "__").removesuffix(".html") + ".png")
    await page.screenshot(path=str(shot), full_page=True)
    found = events + report.pop("problems")
    if not report["title"].strip() or not report["h1"]:
        found.append(f"no title (document.title {report['title']!r}, h1 {report['h1']})")
    for image in report["images"]:
        if image["width"] == 0 and (image["local"] or image["src"] not in EXTERNAL):
            found.append(f"image does not load: {image['src']}")
    for k, video in enumerate(report["videos"]):
        if not video["width"] or not video["duration"] or video["error"]:
            found.append(f"video {k + 1} has no readable metadata: {video}")
        elif not video["playing"]:
            found.append(f"video {k + 1} does not play: {video}")
    if report["raw_tex"]:
        found.append(f"raw TeX left after typesetting: {report['raw_tex'][:3]}")
    if report["math_errors"]:
        found.append(f"{report['math_errors']} TeX errors (mjx-merror)")
    if report["too_wide"]:
        found.append(f"{len(report['too_wide'])} code cells scroll sideways at {WIDTH} px, e.g. "
                     f"{report['too_wide'][0]!r}")
    if name in chapters and not report["figures"]:
        found.append("a chapter without a figure")
    problems.extend(f"{name}: {text}" for text in found)
    return report


MARK = ".fomm-browser-test"  # names a folder this test made, whose screenshots it may replace


def _clear_own_output(out):
    """Makes ``out`` ready for this run's screenshots, removing only what an earlier run wrote."""
    if out.exists() and any(out.iterdir()) and not (out / MARK).exists():
        pytest.fail(f"FOMM_BROWSER_OUT={out} holds files this test did not write; expected a new or "
                    f"empty folder, or one an earlier run made (with its {MARK} file)")
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), out / "report.json"]:
        old.unlink(missing_ok=True)
    (out / MARK).write_text("screenshots and report.json of tests/test_browser.py\n")


def test_the_output_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(pytest.fail.Exception, match="did not write"):
        _clear_own_output(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    own = tmp_path / "own"
    _clear_own_output(own)
    (own / "intro.png").write_bytes(b"x")
    _clear_own_output(own)  # a second run replaces its own screenshots
    assert not (own / "intro.png").exists() and (own / MARK).exists()


def test_every_page_renders_offline_in_chromium(site, capsys):
    async_playwright, chromium = _browser_or_skip()
    base, html = site
    _clear_own_output(OUT)
    chapters = {p.relative_to(ROOT).with_suffix(".html").as_posix() for p in toc_notebooks()}
    pages = [name for name in _pages(html) if name != "index.html"]
    assert chapters <= set(pages), f"chapters missing from the build: {chapters - set(pages)}"
    external, reports = {}, {}
    found = {name: [] for name in [*pages, "search"]}  # each page's problems, reported in this order

    async def check(browser, tabs, name):
        async with tabs:  # a fresh tab for each page: nothing of one page spills into the next
            page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            try:
                reports[name] = await _check_page(page, base, name, chapters, external, found[name], OUT)
            finally:
                await page.close()

    async def search(browser):
        problems = found["search"]
        page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        await page.goto(base + "search.html?q=Jacobian", wait_until="load", timeout=180000)
        try:
            await page.wait_for_selector("#search-results ul.search li", timeout=120000)
            hits = await page.eval_on_selector_all("#search-results ul.search li a", "a => a.map(x => x.href)")
        except Exception as error:  # noqa: BLE001 (reported with the page's name)
            hits = []
            problems.append(f"search.html?q=Jacobian: no results ({type(error).__name__})")
        if hits and not any("02_taylor_series" in hit for hit in hits):
            problems.append(f"search.html?q=Jacobian: the Taylor-series chapter is not among {hits}")
        try:  # the summaries are fetched one by one after the list; then their maths is typeset
            await page.wait_for_function(SEARCH_SETTLED, timeout=120000)
        except Exception as error:  # noqa: BLE001 (reported with the page's name)
            problems.append(f"search.html?q=Jacobian: the results did not settle ({type(error).__name__})")
        inspected = await page.evaluate(INSPECT)
        if inspected["raw_tex"]:
            problems.append(f"search.html?q=Jacobian: raw TeX in the results: {inspected['raw_tex'][:3]}")
        await page.screenshot(path=str(OUT / "search-Jacobian.png"), full_page=True)
        await page.close()

    async def run():
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                await page.goto(base + "index.html", wait_until="commit")  # a redirect to the landing page
                await page.wait_for_url("**/book/intro.html", wait_until="load", timeout=180000)
                await page.close()
                tabs = asyncio.Semaphore(TABS_AT_ONCE)
                await asyncio.gather(*(check(browser, tabs, name) for name in pages), search(browser))
            finally:
                await browser.close()

    asyncio.run(run())
    problems = [problem for name in found for problem in found[name]]
    reports = {name: reports[name] for name in pages}
    narrowest = min((r for r in reports.values() if "columns" in r), key=lambda r: r["columns"])
    if narrowest["columns"] < CODE_COLUMNS:
        problems.append(f"a code cell holds {narrowest['columns']} characters at {WIDTH} px, fewer "
                        f"than the {CODE_COLUMNS} the chapters may use (book/_static/fomm.css)")
    summary = {"pages": len(reports), "code_columns_at_1280px": narrowest["columns"],
               "code_font": narrowest["code_font"],
               "external_requests": {url: sorted(names) for url, names in external.items()},
               "problems": problems}
    (OUT / "report.json").write_text(json.dumps({"summary": summary, "pages": reports}, indent=1) + "\n")
    lines = [f"browser test: {len(reports)} pages, screenshots in {OUT}; code cells hold "
             f"{summary['code_columns_at_1280px']} characters at {WIDTH} px ({summary['code_font']})"]
    for url, names in sorted(external.items()):
        lines.append(f"  a request to another host, failed offline ({EXTERNAL.get(url, 'NOT ALLOWED')}): "
                     f"{url} from {len(names)} pages")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not problems, "\n".join(problems)
