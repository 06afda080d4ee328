"""A real run's report.html in a real browser: headless Chromium, opened as users open it.

Users double-click the file (file://), so that is checked first; the same page is then served
from the run folder over HTTP on loopback, where a link by absolute path, which works from
file:// by accident, breaks. Each time: no console or page errors, no failed request, every
image decoded, every link into the run folder names a file that exists, and the selected size
and the accuracy-latency plot are on screen; plus a phone-width viewport and a full-page
screenshot.

Needs the `playwright` Python package (the dev extra) and a Chromium binary (Debian's
`chromium`; `COMPRESSOR_CHROMIUM=/path` for another one); skipped with the reason when either is
missing, unless `COMPRESSOR_BROWSER_TESTS=required` (set by .ci/run), where missing is a failure.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import struct
import threading
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from compressor.cli import main
from compressor.manifest import read_manifest
from compressor.report._view import safe_name

REQUIRED = os.environ.get("COMPRESSOR_BROWSER_TESTS") == "required"
# a closed network: nothing may try to reach out (it hangs or fails, and is not the report's doing)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-proxy-server",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# search, nested training and export (every figure the report has); latencies predicted, so nothing is timed,
# and a budget far above them, so a size is selected for certain (and its mark is drawn off scale)
RUN_ARGS = ["--image-size", "8", "--epochs", "1", "--calibration-models", "6", "--budget", "10s", "--trials", "2",
            "--sizes", "1,0.5", "--no-progress", "-q"]


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (COMPRESSOR_BROWSER_TESTS=required)")
    pytest.skip(reason)


def _chromium() -> str:
    found = os.environ.get("COMPRESSOR_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not found or not os.access(found, os.X_OK):
        _unavailable(f"no Chromium binary ({found or 'chromium not on PATH'}): apt-get install chromium, "
                     "or set COMPRESSOR_CHROMIUM=/path/to/chromium")
    return found


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no line per request in the test output
        pass


@contextlib.contextmanager
def _serve(folder: Path):
    """The folder over HTTP on a free loopback port, in a thread."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    return struct.unpack(">II", png[16:24])


def _open(context, url: str):
    """A page at `url`, with every console message, page error and failed request recorded."""
    page = context.new_page()
    seen = {"console": [], "errors": [], "failed": []}
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text} (at {m.location.get('url') or url})"))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("requestfailed", lambda r: seen["failed"].append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and seen["failed"].append(f"{r.url}: HTTP {r.status}"))
    response = page.goto(url, wait_until="load")
    assert response is None or response.ok, f"{url}: HTTP {response.status}"
    return page, seen


_LINKS_JS = "() => Array.from(document.querySelectorAll('a[href]'), a => [a.getAttribute('href'), a.href])"
_IMAGES_JS = "() => Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
_IDS_JS = "() => Array.from(document.querySelectorAll('[id]'), e => e.id)"
# where an element is, in page coordinates, and whether something else is drawn over its centre
_PLACE_JS = """el => {
  el.scrollIntoView({block: "center"});
  const r = el.getBoundingClientRect();
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, covered: !el.contains(top),
          viewW: innerWidth, pageW: document.documentElement.scrollWidth,
          pageH: document.documentElement.scrollHeight};
}"""


def _on_screen(page, selector: str, what: str) -> dict:
    """The element is rendered, non-empty, inside the page's width and height, and not covered."""
    locator = page.locator(selector)
    assert locator.count() == 1, f"{what}: {locator.count()} elements match {selector!r}"
    assert locator.is_visible(), f"{what} is not visible"
    box = locator.evaluate(_PLACE_JS)
    assert box["w"] > 0 and box["h"] > 0, f"{what} has an empty box: {box}"
    assert box["x"] >= 0 and box["x"] + box["w"] <= box["viewW"] + 0.5, f"{what} sticks out sideways: {box}"
    assert box["y"] >= 0 and box["y"] + box["h"] <= box["pageH"] + 0.5, f"{what} lies outside the page: {box}"
    assert not box["covered"], f"{what} is covered by another element: {box}"
    return box


def _check_page(page, seen: dict, run: Path, manifest: dict, base: str, how: str, shot: Path) -> None:
    png = page.screenshot(path=str(shot), full_page=True)
    width, height = _png_size(png)
    assert width == VIEWPORT["width"], f"{how}: the page is {width} px wide in a {VIEWPORT['width']} px window"
    assert height > VIEWPORT["height"], f"{how}: the whole report fits in {height} px: a blank page?"
    assert len(png) > 50_000, f"{how}: a {len(png)}-byte screenshot of the whole report is a blank page"

    errors = [m for m in seen["console"] if m.startswith("error:")]
    assert not errors and not seen["errors"], f"{how}: {errors + seen['errors']}"
    assert not seen["failed"], f"{how}: failed requests {seen['failed']}"

    images = page.evaluate(_IMAGES_JS)
    assert len(images) >= 3, f"{how}: {images}"  # accuracy-latency, search front, training curves
    broken = [alt for alt, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not broken, f"{how}: images that did not load: {broken}"

    ids = page.evaluate(_IDS_JS)
    assert len(ids) == len(set(ids)), f"{how}: duplicate ids {sorted(i for i in ids if ids.count(i) > 1)}"
    internal = 0
    for raw, resolved in page.evaluate(_LINKS_JS):
        target = urlparse(resolved)
        if raw.startswith("#"):
            assert raw[1:] in ids, f"{how}: link {raw!r} names no element id"
        elif urlparse(raw).scheme in ("http", "https", "mailto") and not resolved.startswith(base):
            assert target.netloc or target.scheme == "mailto", f"{how}: malformed external link {raw!r}"
        else:
            assert resolved.startswith(base), f"{how}: link {raw!r} leads out of the run folder: {resolved}"
            if how == "file":
                path = Path(url2pathname(target.path))
            else:  # the server must hand it out, not merely the disk hold it
                status = page.request.head(resolved).status
                assert status == 200, f"{how}: link {raw!r} -> HTTP {status}"
                path = run / url2pathname(target.path.lstrip("/"))
            assert path.is_file(), f"{how}: link {raw!r} names no file in the run folder ({path})"
            internal += 1
    files = sum(len(m["files"]) for m in manifest["models"])
    assert internal >= files, f"{how}: {internal} links into the run folder for {files} model files"

    selected = manifest["selected"]
    assert selected, "the run selected no size"
    text = page.inner_text("body")  # rendered text only: display:none and the like are left out
    assert f"Selected {selected} for the budget" in text, f"{how}: the headline does not name {selected}"
    _on_screen(page, "p.headline", f"{how}: the headline")
    _on_screen(page, "tr.selected >> nth=0", f"{how}: the selected size's row")  # in the first table: Sizes
    rows = page.locator("tr.selected td:first-child").all_inner_texts()
    assert rows and all(r.startswith(selected) for r in rows), f"{how}: rows marked selected: {rows}"

    figure = f"figure#accuracy_latency_{safe_name(manifest['budget']['profile'])}"
    plot = _on_screen(page, f"{figure} img", f"{how}: the accuracy-latency plot")
    natural_w, natural_h = page.locator(f"{figure} img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert plot["w"] >= 0.5 * natural_w, f"{how}: the plot is shrunk to {plot['w']} px of {natural_w}"
    assert abs(plot["h"] / plot["w"] - natural_h / natural_w) < 0.02, f"{how}: the plot is distorted: {plot}"
    assert "Accuracy vs latency" in page.locator(f"{figure} img").get_attribute("alt")

    page.set_viewport_size(PHONE)  # the page reflows; wide tables scroll inside their own box
    width = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1], f"{how}: at {PHONE['width']} px the page scrolls sideways: {width}"
    _on_screen(page, f"{figure} img", f"{how}: the accuracy-latency plot on a phone")
    page.set_viewport_size(VIEWPORT)


@pytest.fixture(scope="session")
def browser_tools():
    """Playwright and a Chromium binary; asked for first, so a skip comes before any run is made."""
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("the playwright package is not installed: pip install -e '.[dev]'")
    return sync_api, _chromium()


def test_report_in_a_real_browser(browser_tools, tiny_teacher_files, predicted_profile, tmp_path, monkeypatch,
                                  capsys):
    sync_api, executable = browser_tools
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code = main(["--teacher", str(tiny_teacher_files["torchscript"]), "--out", str(run),
                 "--profile", predicted_profile, *RUN_ARGS])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(run)

    with sync_api.sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                viewport=VIEWPORT, timeout=60_000)
        except sync_api.Error as e:
            _unavailable(f"Chromium at {executable} does not start: {str(e).splitlines()[0]}")
        context.set_default_timeout(30_000)
        try:
            page, seen = _open(context, (run / "report.html").as_uri())
            _check_page(page, seen, run, manifest, run.as_uri() + "/", "file", tmp_path / "report-file.png")
            with _serve(run) as base:
                page, seen = _open(context, base + "report.html")
                _check_page(page, seen, run, manifest, base, "http", tmp_path / "report-http.png")
        finally:
            context.close()
