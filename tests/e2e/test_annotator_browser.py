"""The annotator's work page in a real headless Chromium: keyboard ranking, htmx swaps,
validation errors, ties, drafts, drag and drop, and the no-JavaScript fallback."""

import re
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import expect

from labeling.models import Annotation, Assignment, Role
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import membership_add, project_create
from tests.conftest import rank_items
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CARDS = ".response-card"



def submit_with_enter(page) -> dict:
    """Press Enter, wait for the next task, and return the recorded {completion: rank}."""
    prompt = page.inner_text("#prompt-text")
    press(page, "Enter")
    expect(page.locator("#prompt-text")).not_to_have_text(prompt)
    return {e["completion"]: e["rank"] for e in Annotation.objects.get().ranking}

def import_ranks(project, n=3, prefix="Prompt"):
    report = prompts_import(
        project=project, records=records_from_items(rank_items(n, prefix=prefix))
    )
    assert report.imported and report.tasks_created == n


def open_queue(page, project, kind="rank", user="bob"):
    login(page, user, f"/projects/{project.pk}/work/?kind={kind}")


def shown_ids(page) -> list[int]:
    """Return the completion ids in the order the cards are shown."""
    return page.eval_on_selector_all(
        CARDS, "cards => cards.map(card => Number(card.dataset.completion))"
    )


def rank_values(page) -> list[str]:
    return page.eval_on_selector_all(".rank-select", "selects => selects.map(s => s.value)")


def focused_index(page) -> int:
    return page.evaluate(
        "Array.from(document.querySelectorAll('.response-card')).indexOf(document.activeElement)"
    )


def press(page, *keys):
    for key in keys:
        page.keyboard.press(key)


def rate_all_with_keyboard(page, ratings):
    """Give every card its rating with the keyboard alone, ending with focus on the last card.

    Shift+digit rates the focused card (focus stays on it); an arrow moves on.
    """
    cards = page.locator(CARDS)
    assert focused_index(page) == 0
    for index, rating in enumerate(ratings):
        press(page, f"Shift+Digit{rating}")
        expect(cards.nth(index)).to_be_focused()
        if index < len(ratings) - 1:
            press(page, "ArrowRight")
    values = page.eval_on_selector_all(".rating-select", "s => s.map(x => x.value)")
    assert values == [str(r) for r in ratings]


def focus_first_card(page):
    """Move focus to the first card with the arrow keys (from any card)."""
    for _ in range(page.locator(CARDS).count()):
        press(page, "ArrowLeft")
    expect(page.locator(CARDS).first).to_be_focused()


def test_it_ranks_with_the_keyboard_and_swaps_in_the_next_task(page, project):
    import_ranks(project)
    open_queue(page, project)
    cards = page.locator(CARDS)
    expect(cards).to_have_count(4)
    expect(cards.first).to_be_focused()
    ids = shown_ids(page)
    first_prompt = page.inner_text("#prompt-text")
    page.evaluate("window.__noReload = 'still here'")

    # A is focused; → to B, 1; focus jumps to the next unranked card (C); ← ← to A, 3;
    # focus jumps to C: 4; then D: 2.
    press(page, "ArrowRight", "1")
    expect(cards.nth(2)).to_be_focused()
    press(page, "ArrowLeft", "ArrowLeft")
    expect(cards.nth(0)).to_be_focused()
    press(page, "3")
    expect(cards.nth(2)).to_be_focused()
    press(page, "4")
    expect(cards.nth(3)).to_be_focused()
    press(page, "2")
    assert rank_values(page) == ["3", "1", "4", "2"]
    expect(cards.nth(1)).to_have_attribute("data-rank", "1")
    expect(cards.nth(1)).to_have_class(re.compile(r"\branked\b"))

    focus_first_card(page)
    rate_all_with_keyboard(page, [4, 7, 2, 5])
    with page.expect_request(lambda r: r.method == "POST") as posted:
        press(page, "Enter")
    assert posted.value.headers.get("hx-request") == "true"
    body = parse_qs(posted.value.post_data)

    expect(page.locator("#prompt-text")).not_to_have_text(first_prompt)
    assert page.evaluate("window.__noReload") == "still here"
    expect(page.locator("#progress-counter")).to_contain_text("1 rankings")
    expect(page.locator(CARDS).first).to_be_focused()
    assert rank_values(page) == ["", "", "", ""]

    annotation = Annotation.objects.get(annotator__username="bob")
    assert Annotation.objects.count() == 1
    assert annotation.assignment.display_order == ids
    got = {e["completion"]: (e["rank"], e["rating"]) for e in annotation.ranking}
    assert got == {ids[0]: (3, 4), ids[1]: (1, 7), ids[2]: (4, 2), ids[3]: (2, 5)}
    assert body["time_spent_ms"][0].isdigit()
    assert annotation.time_spent_ms == int(body["time_spent_ms"][0])
    page.problems.assert_clean()


def test_it_shows_the_error_and_records_nothing_when_a_response_is_unranked(page, project):
    import_ranks(project)
    open_queue(page, project)
    prompt = page.inner_text("#prompt-text")
    ids = shown_ids(page)
    page.evaluate("window.__noReload = 1")
    press(page, "1", "2", "3")  # A, B, C; D stays unranked
    focus_first_card(page)
    rate_all_with_keyboard(page, [5, 5, 5, 5])
    press(page, "Enter")

    errors = page.locator("#form-errors")
    expect(errors).to_be_visible()
    expect(errors).to_contain_text(f"every response needs a rank; missing: D (id {ids[3]})")
    expect(errors.locator("li")).to_have_count(1)
    assert page.evaluate("window.__noReload") == 1
    expect(page.locator("#prompt-text")).to_have_text(prompt)
    # What was entered comes back, and the badges show it again.
    assert rank_values(page) == ["1", "2", "3", ""]
    expect(page.locator(CARDS).nth(2)).to_have_attribute("data-rank", "3")
    assert Annotation.objects.count() == 0
    assert Assignment.objects.get(annotator__username="bob").state == Assignment.State.ACTIVE

    # Fixing it submits the same assignment.
    page.locator(CARDS).nth(3).focus()
    press(page, "4", "Enter")
    expect(page.locator("#prompt-text")).not_to_have_text(prompt)
    assert Annotation.objects.count() == 1
    page.problems.assert_clean()


def rate_submit_and_check(page, ratings, expected_ranks) -> None:
    """Rate every card from the first, submit with Enter, and check the recorded ranks."""
    focus_first_card(page)
    rate_all_with_keyboard(page, ratings)
    assert submit_with_enter(page) == expected_ranks
    page.problems.assert_clean()


def test_two_responses_can_share_a_rank_when_ties_are_allowed(page, project):
    assert project.allow_ties
    import_ranks(project)
    open_queue(page, project)
    ids = shown_ids(page)
    press(page, "1", "1", "2", "3")
    assert rank_values(page) == ["1", "1", "2", "3"]
    rate_submit_and_check(page, [6, 6, 3, 1], {ids[0]: 1, ids[1]: 1, ids[2]: 2, ids[3]: 3})


def test_a_used_rank_swaps_when_ties_are_not_allowed(page, alice, bob):
    project = project_create(creator=alice, name="No ties", allow_ties=False, gold_rate=0.0)
    membership_add(project=project, username="bob", role=Role.ANNOTATOR)
    import_ranks(project)
    open_queue(page, project)
    expect(page.locator(".hint")).to_contain_text("each rank once")
    ids = shown_ids(page)
    press(page, "1", "2")  # A=1, B=2, focus on C
    press(page, "ArrowLeft", "ArrowLeft", "2")  # A takes 2: B gets A's old 1
    assert rank_values(page) == ["2", "1", "", ""]
    expect(page.locator(CARDS).nth(1)).to_have_attribute("data-rank", "1")
    press(page, "3", "4")  # focus went to C, then D
    press(page, "ArrowLeft", "4")  # C takes 4: D gets C's 3
    assert rank_values(page) == ["2", "1", "4", "3"]
    rate_submit_and_check(page, [2, 3, 4, 5], {ids[0]: 2, ids[1]: 1, ids[2]: 4, ids[3]: 3})


def test_a_demonstration_draft_survives_a_reload_and_is_gone_after_submitting(page, project):
    items = [{"prompt": f"Write a poem about topic {i}", "user_id": f"u{i}"} for i in range(2)]
    report = prompts_import(project=project, records=records_from_items(items))
    assert report.tasks_created == 2
    open_queue(page, project, kind="demonstrate")
    editor = page.locator("#demo-text")
    expect(editor).to_have_value("")
    prompt = page.inner_text("#prompt-text")
    draft = "Roses are red,\nviolets are blue"
    editor.click()
    page.keyboard.type(draft)
    expect(page.locator(".js-char-count")).to_have_text(str(len(draft)))

    page.reload()
    expect(page.locator("#prompt-text")).to_have_text(prompt)
    expect(editor).to_have_value(draft)
    expect(page.locator(".js-char-count")).to_have_text(str(len(draft)))

    page.evaluate("window.__noReload = 1")
    editor.focus()
    press(page, "Control+Enter")
    expect(page.locator("#prompt-text")).not_to_have_text(prompt)
    assert page.evaluate("window.__noReload") == 1
    expect(editor).to_have_value("")
    assert Annotation.objects.get().text == draft
    stored = page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('laoshi-draft'))")
    assert stored == []
    page.reload()
    expect(editor).to_have_value("")

    # A skipped task's draft goes as well (the task never comes back to this annotator).
    page.evaluate("window.__noReload = 2")
    editor.click()
    page.keyboard.type("half a thought")
    page.click(".skip-form summary")
    page.click(".skip-form button[type=submit]")
    expect(page.locator("#empty-queue")).to_be_visible()
    assert page.evaluate("window.__noReload") == 2
    stored = page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('laoshi-draft'))")
    assert stored == []
    page.problems.assert_clean()


def test_drag_and_drop_orders_the_responses_and_ranks_them(page, project):
    import_ranks(project)
    open_queue(page, project)
    ids = shown_ids(page)
    cards = page.locator(CARDS)

    def drag(source_index, target_index):
        handle = cards.nth(source_index).locator(".drag-handle").bounding_box()
        target = cards.nth(target_index).locator(".response-head").bounding_box()
        page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
        page.mouse.down()
        steps = 12
        x0, y0 = handle["x"] + 4, handle["y"] + 4
        x1, y1 = target["x"] + 10, target["y"] + target["height"] / 2
        for step in range(1, steps + 1):
            page.mouse.move(x0 + (x1 - x0) * step / steps, y0 + (y1 - y0) * step / steps)
            page.wait_for_timeout(15)  # a busy machine: let Sortable see every move
        page.wait_for_timeout(200)  # and finish its swap animation before the drop
        page.mouse.up()

    drag(3, 0)  # D to the top
    expect(cards.first).to_have_attribute("data-completion", str(ids[3]))
    order = shown_ids(page)
    assert sorted(order) == sorted(ids) and order[0] == ids[3]
    assert rank_values(page) == ["1", "2", "3", "4"]
    expect(cards.first).to_have_attribute("data-rank", "1")
    expect(cards.first).to_be_focused()  # the dropped card, so the keyboard goes on from it

    focus_first_card(page)
    rate_all_with_keyboard(page, [7, 6, 5, 4])
    ranks = submit_with_enter(page)
    assert ranks == {cid: position for position, cid in enumerate(order, start=1)}
    page.problems.assert_clean()


def test_the_page_works_without_javascript(context_factory, project):
    import_ranks(project)
    page = context_factory(java_script_enabled=False).new_page()
    open_queue(page, project)
    assert page.evaluate("typeof window.htmx") == "undefined"  # no page script ran
    expect(page.locator("#task-form")).not_to_have_attribute("data-ready", "1")
    prompt = page.inner_text("#prompt-text")
    ids = shown_ids(page)

    # A missing rank: the server answers with the whole page and the error.
    page.locator(".rating-select").nth(0).select_option("3")
    page.click("#submit-button")
    expect(page.locator("#form-errors")).to_contain_text("every response needs a rank")
    assert Annotation.objects.count() == 0

    for index, (rank, rating) in enumerate([(2, 3), (1, 4), (4, 5), (3, 6)]):
        page.locator(".rank-select").nth(index).select_option(str(rank))
        page.locator(".rating-select").nth(index).select_option(str(rating))
    page.click("#submit-button")
    page.wait_for_url(f"**/projects/{project.pk}/work/?kind=rank")
    expect(page.locator("#prompt-text")).not_to_have_text(prompt)
    ranks = {e["completion"]: e["rank"] for e in Annotation.objects.get().ranking}
    assert ranks == {ids[0]: 2, ids[1]: 1, ids[2]: 4, ids[3]: 3}
