"""The documentation site works without a network (docs/vendor/README.md).

The site is built (`mkdocs build --strict`, as `make docs` does), served on
localhost and opened in headless Chromium that can reach nothing else: the
math and the Architecture diagram render from the copies served with the
site, no page asks for anything off the site, and the console shows no
error. The API pages have a heading for every public name (mkdocstrings can
drop one without a warning: docs/api/models.md).

Chromium is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`), with the standard library only.
"""

import functools
import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import BACKEND
from support.processes import TIMEOUT_SCALE

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
TIMEOUT = 60 * TIMEOUT_SCALE

pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the docs are the same on every backend; the tensorflow run "
    "checks them",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (`make install` installs Debian's "
    "`chromium` when it is missing)",
)

# A page with math, and the page with the mermaid diagram.
MATH_PAGE = "methods/sam/"
DIAGRAM_PAGE = "architecture/"
# The public packages: each name in their `__all__` has a heading
# `package.name` on an API page, but for the subpackages, which have pages.
PACKAGES = (
    "keras_sam",
    "keras_sam.analysis",
    "keras_sam.optimizers",
    "keras_sam.demo.models",
)

# Headless, as root, with no network but localhost: host names resolve to
# nothing and every other request goes to a proxy where nothing listens
# (localhost bypasses it).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--remote-debugging-pipe",
)

# Resolves once the page has settled: MathJax's typesetting done (when
# MathJax loaded: each typeset replaces `MathJax.startup.promise` by a promise
# of its end) and mkdocs-material's mermaid diagrams rendered (it replaces
# each `pre.mermaid` by a `div.mermaid`), or after 10 s; then the fonts
# that the page's layout uses (MathJax's among them) loaded.
SETTLED = """(async () => {
  let typeset;
  while (window.MathJax?.startup?.promise !== typeset) {
    typeset = MathJax.startup.promise;
    await typeset;
  }
  for (let i = 0; i < 200 && document.querySelector("pre.mermaid"); i++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  document.body.getBoundingClientRect();
  await document.fonts.ready;
})()"""
# The `.arithmatex` elements (arithmatex's TeX) and those MathJax typeset
# visibly: in an `mjx-container`, with MathJax's style for every character
# (its `content`; without it, the character shows nothing).
MATH = """({
  tex: document.querySelectorAll(".arithmatex").length,
  typeset: [...document.querySelectorAll(".arithmatex")].filter((e) => {
    const styled = (c) => getComputedStyle(c, "::before").content !== "none";
    return e.querySelector("mjx-container") !== null
      && [...e.querySelectorAll("mjx-c")].every(styled);
  }).length,
})"""


class Chromium:
    """Headless Chromium, driven over the DevTools protocol on the pipe of
    `--remote-debugging-pipe` (JSON messages ending in a NUL byte, Chromium
    reading fd 3 and writing fd 4).

    Args:
        profile: a fresh directory for the browser profile.
    """

    def __init__(self, profile: Path):
        commands, self._commands = os.pipe()
        self._replies, replies = os.pipe()
        self.log = profile / "chromium.log"
        # The pipes reach the shell as its stdin and stdout, which it moves
        # to fds 3 and 4 (dash redirects single-digit fds only).
        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(
                ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null']
                + [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
                stdin=commands,
                stdout=replies,
                stderr=log,
                start_new_session=True,
            )
        os.close(commands)
        os.close(replies)
        self._received = b""
        self._last_id = 0
        self.events = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Sends a command (to the page of `session`) and returns its result;
        the events received meanwhile go to `self.events`."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while (reply := self._receive()).get("id") != self._last_id:
            self.events.append(reply)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def wait_for(self, method: str, session: str) -> None:
        """Receives messages until the event `method` of `session`."""
        while not any(
            e["method"] == method and e.get("sessionId") == session
            for e in self.events
        ):
            self.events.append(self._receive())

    def _receive(self) -> dict:
        """The next message from Chromium (a reply or an event)."""
        while b"\0" not in self._received:
            ready, _, _ = select.select([self._replies], [], [], TIMEOUT)
            assert ready, f"Chromium did not answer in {TIMEOUT} s: {self.log}"
            chunk = os.read(self._replies, 1 << 20)
            assert chunk, f"Chromium exited: {self.log}"
            self._received += chunk
        message, self._received = self._received.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        """Closes the browser, and ends its processes (its own session)."""
        try:
            self.send("Browser.close")
            self._process.wait(timeout=10)
        finally:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        os.close(self._commands)
        os.close(self._replies)


def _nodes(node: dict):
    """`node` of `DOM.getDocument` and its descendants, in shadow roots too
    (mkdocs-material draws each diagram in a closed one)."""
    yield node
    for child in node.get("children", []) + node.get("shadowRoots", []):
        yield from _nodes(child)


def _attributes(node: dict) -> dict:
    names_and_values = node.get("attributes", [])
    return dict(zip(names_and_values[::2], names_and_values[1::2]))


def _diagrams(document: dict) -> list:
    """The `aria-roledescription` of the svg in each mermaid diagram that
    mkdocs-material rendered (a `div.mermaid`; None if it holds no svg).
    mermaid's picture of a syntax error is `"error"`."""
    roles = []
    for node in _nodes(document):
        if node.get("localName") == "div" and (
            _attributes(node).get("class") == "mermaid"
        ):
            svgs = [n for n in _nodes(node) if n.get("localName") == "svg"]
            svg = _attributes(svgs[0]) if svgs else {}
            roles.append(svg.get("aria-roledescription"))
    return roles


def _errors(events: list) -> list:
    """The console's errors among a page's `events`: uncaught exceptions,
    `console.error` and the browser's own (a resource that failed to load)."""
    errors = []
    for event in events:
        method, params = event["method"], event["params"]
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            exception = details.get("exception", {})
            errors.append(exception.get("description", details["text"]))
        elif method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "assert",
        ):
            errors.append(" ".join(str(a.get("value")) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(params["entry"]["text"])
    return errors


def _evaluate(browser: Chromium, session: str, expression: str):
    """The value of the JavaScript `expression` in the page (awaited)."""
    result = browser.send(
        "Runtime.evaluate",
        session,
        expression=expression,
        awaitPromise=True,
        returnByValue=True,
    )
    return result["result"].get("value")


def _open(browser: Chromium, url: str) -> dict:
    """Opens `url` in a new tab, waits for it to settle and returns what the
    tests check: its console errors, the URLs it requested, its math and
    its diagrams."""
    target = browser.send("Target.createTarget", url="about:blank")
    session = browser.send(
        "Target.attachToTarget", targetId=target["targetId"], flatten=True
    )["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session)
    browser.send("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired", session)
    _evaluate(browser, session, SETTLED)
    document = browser.send("DOM.getDocument", session, depth=-1, pierce=True)
    events = [e for e in browser.events if e.get("sessionId") == session]
    return {
        "errors": _errors(events),
        "requests": [
            e["params"]["request"]["url"]
            for e in events
            if e["method"] == "Network.requestWillBeSent"
        ],
        "math": _evaluate(browser, session, MATH),
        "diagrams": _diagrams(document["root"]),
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built strictly, as `make docs` does."""
    pytest.importorskip("mkdocs", reason="the `docs` extra is not installed")
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        check=True,
        timeout=4 * TIMEOUT,
    )
    return site


@pytest.fixture(scope="module")
def origin(site):
    """The site served on localhost, as its address."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=site
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pages(origin, tmp_path_factory) -> dict:
    """What `_open` saw of each page checked, by its path in the site."""
    browser = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        return {
            page: _open(browser, origin + page)
            for page in (MATH_PAGE, DIAGRAM_PAGE)
        }
    finally:
        browser.close()


@needs_chromium
def test_math_renders_offline(pages):
    math = pages[MATH_PAGE]["math"]
    assert math["tex"] > 0
    assert math["typeset"] == math["tex"], "TeX left as text, or unstyled"


@needs_chromium
def test_mermaid_diagram_renders_offline(pages):
    assert pages[DIAGRAM_PAGE]["diagrams"] == ["flowchart-v2"]


@needs_chromium
@pytest.mark.parametrize("page", [MATH_PAGE, DIAGRAM_PAGE])
def test_pages_request_nothing_off_the_site(pages, origin, page):
    off_site = [
        url
        for url in pages[page]["requests"]
        if not url.startswith((origin, "data:"))
    ]
    assert off_site == [], "\n".join(off_site)


@needs_chromium
@pytest.mark.parametrize("page", [MATH_PAGE, DIAGRAM_PAGE])
def test_pages_log_no_console_error(pages, page):
    errors = pages[page]["errors"]
    assert errors == [], "\n".join(errors)


class _Headings(HTMLParser):
    """The name in each mkdocstrings heading (`class="doc doc-heading"`): its
    first word, before labels such as `dataclass`."""

    def __init__(self):
        super().__init__()
        self.headings = []
        self._heading = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        if "doc-heading" in (dict(attrs).get("class") or "").split():
            self._heading, self._text = tag, []

    def handle_data(self, data):
        self._text.append(data)

    def handle_endtag(self, tag):
        if tag == self._heading:
            self.headings.append("".join(self._text).split()[0])
            self._heading = None


def test_api_pages_have_a_heading_for_every_public_name(site):
    import griffe

    parser = _Headings()
    for page in sorted((site / "api").glob("*/index.html")):
        parser.feed(page.read_text())
    names = {
        f"{package}.{name}"
        for package in PACKAGES
        for name in griffe.load(package, search_paths=[ROOT]).exports
    }
    assert sorted(names - set(PACKAGES) - set(parser.headings)) == []
