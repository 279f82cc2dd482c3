"""Untrusted text in a real browser: script payloads in prompts, chats, completions,
guidelines and project names show as text, and nothing runs."""

import json

import pytest
from playwright.sync_api import expect

from labeling.models import Annotation, Role
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import membership_add, project_create
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=1">'
BREAKOUT = "</script><script>window.__xss=1</script>"
SVG_ALERT = "<svg onload=alert(1)>"
TEXTAREA_BREAKOUT = "</textarea><script>window.__xss=1</script>"

GUIDELINES = f"""# Rules {SCRIPT}

Read [the policy](javascript:window.__xss=1) first.

<a href="javascript:window.__xss=1">raw link</a>

{IMG}

<div onclick="window.__xss=1">{BREAKOUT}</div>
"""

TEXT_PROMPT = f"Explain {SCRIPT} then {IMG}\nand {BREAKOUT}"
CHAT = [
    {"role": "system", "content": f"System says {SCRIPT}"},
    {"role": "assistant", "content": f"Earlier answer {SVG_ALERT}"},
    {"role": "user", "content": f"User asks {IMG} {BREAKOUT}"},
]
COMPLETIONS = [
    f"One {SCRIPT}",
    f"Two {IMG}",
    f"Three {BREAKOUT}",
    f"Four {SVG_ALERT} <b>not bold</b> [x](javascript:alert(1))",
]

# Everything in the document that could run script: elements, handler attributes, URLs.
ACTIVE_CONTENT = """() => {
  const found = [];
  document.querySelectorAll("script").forEach(s => {
    if (s.type !== "application/json" && !s.src) found.push("inline script: " + s.textContent);
  });
  document.querySelectorAll("img, svg, iframe, object, embed").forEach(
    e => found.push("element: " + e.outerHTML));
  document.querySelectorAll("*").forEach(e => {
    for (const a of e.attributes) {
      if (a.name.startsWith("on")) found.push("handler: " + e.outerHTML.slice(0, 120));
      if (/^\\s*javascript:/i.test(a.value)) found.push("javascript url: " + e.outerHTML);
    }
  });
  return found;
}"""


@pytest.fixture
def evil_project(alice, bob):
    project = project_create(
        creator=alice,
        name=f"Evil {SCRIPT} {IMG}",
        guidelines=GUIDELINES,
        gold_rate=0.0,
    )
    membership_add(project=project, username="bob", role=Role.ANNOTATOR)
    completions = [{"text": text, "model": "m"} for text in COMPLETIONS]
    chat_completions = [{"text": f"chat {text}", "model": "m"} for text in COMPLETIONS]
    items = [
        {"prompt": TEXT_PROMPT, "user_id": "u1", "completions": completions},
        {"messages": CHAT, "user_id": "u2", "completions": chat_completions},
    ]
    report = prompts_import(project=project, records=records_from_items(items))
    assert report.tasks_created == 2, report.as_dict()
    return project


def assert_nothing_ran(page):
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate(ACTIVE_CONTENT) == []
    page.problems.assert_clean()


def script_src(header: str) -> list[str]:
    directives = {}
    for part in header.split(";"):
        tokens = part.split()
        if tokens:
            directives[tokens[0].lower()] = tokens[1:]
    return directives.get("script-src", directives.get("default-src"))


def test_untrusted_text_is_shown_as_text_and_never_runs(page, evil_project):
    project = evil_project
    work_url = f"/projects/{project.pk}/work/?kind=rank"
    login(page, "bob")
    expect(page.locator("main")).to_contain_text(project.name)
    assert_nothing_ran(page)

    response = page.goto(work_url)
    csp = response.headers["content-security-policy"]
    sources = script_src(csp)
    assert sources is not None, csp
    assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources, csp
    assert "'self'" in sources

    expect(page.locator(".task-head a")).to_have_text(project.name)
    assert page.inner_text("#prompt-text") == TEXT_PROMPT
    texts = page.locator(".response-text").all_inner_texts()
    assert sorted(texts) == sorted(COMPLETIONS)
    config = json.loads(page.locator("#task-config").text_content())
    assert config["k"] == 4 and config["allowTies"] is True

    guidelines = page.locator(".guidelines")
    expect(guidelines).to_contain_text("Read the policy first.")
    expect(guidelines).to_contain_text("raw link")
    expect(guidelines.locator("a[href]")).to_have_count(0)
    guidelines.get_by_text("the policy").click()
    guidelines.get_by_text("raw link").click()
    assert_nothing_ran(page)

    # A failed submit sends the comment back into its textarea: still only text.
    page.fill("#comment", TEXTAREA_BREAKOUT)
    page.locator(".rating-select").first.select_option("4")
    page.click("#submit-button")
    expect(page.locator("#form-errors")).to_be_visible()
    expect(page.locator("#comment")).to_have_value(TEXTAREA_BREAKOUT)
    assert_nothing_ran(page)

    # A good submit swaps in the chat task through htmx; still nothing runs.
    for index in range(4):
        page.locator(".rank-select").nth(index).select_option(str(index + 1))
        page.locator(".rating-select").nth(index).select_option("5")
    page.click("#submit-button")
    turns = page.locator(".chat .turn .prompt-text")
    expect(turns).to_have_text([m["content"] for m in CHAT])
    texts = page.locator(".response-text").all_inner_texts()
    assert sorted(texts) == sorted(f"chat {text}" for text in COMPLETIONS)
    annotation = Annotation.objects.get()
    assert annotation.comment == TEXTAREA_BREAKOUT
    assert_nothing_ran(page)

    # The project page shows the name and the guidelines the same way.
    page.goto(f"/projects/{project.pk}/")
    expect(page.locator("main")).to_contain_text(project.name)
    assert_nothing_ran(page)
