"""Real-browser fixtures: one headless Chromium per session, a fresh context per test.

The browser talks to pytest-django's ``live_server`` (a real HTTP server in a thread),
so the tests that use it need a transactional database: rows the test writes must be
committed for the server thread to see them, and the other way round.
"""

import os
from urllib.parse import quote

import pytest

from tests.conftest import PASSWORD
from tests.services import chromium_path, unavailable

# Playwright's sync API runs an event loop in this thread; Django refuses ORM calls from a
# thread with a running loop unless told that this is deliberate (tests only).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000

# Runs before any page script (and outside the page's CSP): records every CSP
# violation, so that a test can assert that our own code never trips the policy.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "") + " "
    + (e.sourceFile || "") + ":" + (e.lineNumber || 0));
});
"""


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if not path:
        unavailable("Chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - playwright is a dev dependency
        unavailable("Playwright")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems:
    """Console errors, uncaught exceptions and dialogs seen by one page."""

    def __init__(self, page):
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def csp_violations(self) -> list[str]:
        recorded = self.page.evaluate("window.__cspViolations || []")
        from_console = [m for m in self.console_errors if "Content Security Policy" in m]
        return recorded + from_console

    def assert_clean(self):
        assert self.page_errors == [], self.page_errors
        assert self.dialogs == [], self.dialogs
        assert self.csp_violations() == []
        assert self.console_errors == [], self.console_errors


@pytest.fixture
def context_factory(browser, live_server):
    """Return a function making a fresh browser context (closed after the test)."""
    contexts = []

    def make(**options):
        options.setdefault("base_url", live_server.url)
        options.setdefault("viewport", {"width": 1400, "height": 1000})
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(RECORD_CSP_VIOLATIONS)
        # The app has no favicon; the browser's automatic request for one is not a page error.
        context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(context_factory):
    page = context_factory().new_page()
    page.problems = PageProblems(page)
    return page


def login(page, username: str, next_url: str = "/") -> None:
    """Log in through the real login form and land on ``next_url``."""
    page.goto(f"/accounts/login/?next={quote(next_url)}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit].primary")
    page.wait_for_url(f"**{next_url}")
