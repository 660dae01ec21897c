"""The built documentation site, read in a real browser (headless Chromium through Playwright).

Run by the docs tox env after `mkdocs build --strict`:

    NOVOLSTM_SITE=path/to/site pytest site_tests

Every page is served over HTTP and loaded; the test fails when a page does not load or
raises a script error, when its text (code excluded) shows a literal Sphinx role, RST
double backquotes or an RST directive, when a doctest prompt sits in a blockquote
(an example outside an Examples: section), when an image does not load, or when an
internal link or anchor leads nowhere, when a page is outside the navigation or two
navigation entries lead to the same page. The pages visited are written to
NOVOLSTM_SITE/../visited-pages.txt.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|mod|exc|obj|ref|doc|term):")
RST_DIRECTIVE = re.compile(r"^\s*\.\. [a-z-]+::", re.M)

# The page's readable text without code (generated source legitimately holds ``x`` in docstrings).
TEXT_WITHOUT_CODE = """() => {
    const article = document.querySelector("article") || document.body;
    const copy = article.cloneNode(true);
    copy.querySelectorAll("pre, code, script, style").forEach(e => e.remove());
    return copy.innerText;
}"""
BROKEN_IMAGES = """() => Array.from(document.images)
    .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"))"""
LINKS = """() => Array.from(document.querySelectorAll("a[href]")).map(a => a.href)"""
IDS = """() => Array.from(document.querySelectorAll("[id]")).map(e => e.id)"""
NAV = """() => Array.from(document.querySelectorAll(".md-nav--primary a.md-nav__link[href]"))
    .map(a => [a.innerText.trim(), a.href])"""
# Markdown reads a >>> prompt outside an Examples: section as three nested blockquotes.
PROMPTS_IN_BLOCKQUOTES = """() => Array.from(document.querySelectorAll("article blockquote"))
    .filter(b => b.innerText.includes(">>>") || b.querySelector("blockquote")).length"""


def _site() -> Path:
    folder = os.environ.get("NOVOLSTM_SITE")
    if not folder or not (Path(folder) / "index.html").is_file():
        raise RuntimeError(
            f"NOVOLSTM_SITE={folder!r}: expected the folder mkdocs built (with index.html); "
            "tox -e docs builds it and sets it"
        )
    return Path(folder)


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError(
            "no Chromium found: install Debian's chromium package (apt-get install -y chromium) "
            "or set CHROMIUM to a Chromium executable"
        )
    return found


@pytest.fixture(scope="module")
def server():
    site = _site()
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports what fails; no access log
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium())
        yield chromium
        chromium.close()


def _pages(site: Path) -> list[str]:
    """Every HTML page of the site, as a path relative to its root ("" for the home page)."""
    pages = []
    for html in sorted(site.rglob("*.html")):
        rel = html.relative_to(site).as_posix()
        pages.append(rel[: -len("index.html")] if rel.endswith("index.html") else rel)
    return pages


def test_every_page_reads_well_in_a_browser(server, browser):
    site, root = server
    pages = _pages(site)
    assert "" in pages and "api/torch/" in pages and "reference/cli/" in pages
    ids: dict[str, set] = {}
    links: dict[str, set] = {}
    problems: list[str] = []
    page = browser.new_page()
    errors: list[str] = []
    failed: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 and r.url.startswith(root) else None,
    )
    for path in pages:
        errors.clear()
        failed.clear()
        response = page.goto(root + path, wait_until="load")
        if response is None or response.status != 200:
            problems.append(f"{path or '/'}: HTTP {response.status if response else 'no response'}")
            continue
        text = page.evaluate(TEXT_WITHOUT_CODE)
        for pattern, what in ((SPHINX_ROLE, "a Sphinx role"), (RST_DIRECTIVE, "an RST directive")):
            found = pattern.search(text)
            if found:
                problems.append(f"{path}: {what} in the text: {text[max(0, found.start() - 40) : found.end() + 40]!r}")
        if "``" in text:
            at = text.index("``")
            problems.append(f"{path}: RST double backquotes in the text: {text[max(0, at - 40) : at + 40]!r}")
        if page.evaluate(PROMPTS_IN_BLOCKQUOTES):
            problems.append(f"{path}: a >>> example rendered as a blockquote (not under an Examples: section)")
        problems += [f"{path}: image does not load: {src}" for src in page.evaluate(BROKEN_IMAGES)]
        problems += [f"{path}: script error: {e}" for e in errors]
        problems += [f"{path}: request failed: {f}" for f in failed]
        ids[urllib.parse.urljoin(root, path)] = set(page.evaluate(IDS))
        links[path] = {href for href in page.evaluate(LINKS) if href.startswith(root)}
        if path == "":
            navigation = page.evaluate(NAV)
    page.close()
    problems += _broken_links(root, links, ids)
    problems += _navigation_problems(root, navigation, pages)
    (site.parent / "visited-pages.txt").write_text("\n".join("/" + p for p in pages) + "\n")
    assert not problems, f"{len(problems)} problems on {len(pages)} pages:\n" + "\n".join(problems)


def _navigation_problems(root: str, navigation: list, pages: list[str]) -> list[str]:
    """Every page in the navigation, each entry its own page (two sources cannot share a URL)."""
    problems, seen = [], {}
    for title, href in navigation:
        if "#" in href:  # the current page's table of contents, folded into the navigation
            continue
        target = href
        if target in seen and seen[target] != title:
            problems.append(
                f"navigation: {title!r} and {seen[target]!r} lead to the same page {target[len(root) - 1 :]}"
            )
        seen.setdefault(target, title)
    if not seen:
        return ["navigation: the home page shows no navigation links"]
    listed = {href[len(root) :] for href in seen}
    problems += [f"/{p}: a page outside the navigation" for p in pages if p not in listed and p != "404.html"]
    return problems


def _broken_links(root: str, links: dict[str, set], ids: dict[str, set]) -> list[str]:
    """Internal links whose target does not exist, or whose #fragment names no element there."""
    problems, status = [], {}
    for path, hrefs in links.items():
        for href in sorted(hrefs):
            target, _, fragment = href.partition("#")
            if target not in ids:  # not a page we visited: a file (image, example source, search index)
                if target not in status:
                    try:
                        with urllib.request.urlopen(target, timeout=10) as reply:
                            status[target] = reply.status
                    except urllib.error.HTTPError as exc:
                        status[target] = exc.code
                if status[target] != 200:
                    problems.append(f"{path}: link to {href[len(root) - 1 :]} answers {status[target]}")
                continue
            if fragment and urllib.parse.unquote(fragment) not in ids[target]:
                problems.append(f"{path}: link to {href[len(root) - 1 :]}: no element with id {fragment!r}")
    return problems
