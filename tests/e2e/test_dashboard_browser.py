"""The lead's dashboard in headless Chromium: the charts are drawn, nothing is blocked."""

import pytest
from playwright.sync_api import expect

from labeling.models import Task
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.metrics import agreement_refresh
from labeling.services.project import project_update
from labeling.services.submission import annotation_submit
from tests.conftest import rank_items
from tests.e2e.conftest import login

pytestmark = pytest.mark.browser


def test_the_dashboard_draws_its_charts_with_data(page, project, bob, dana):
    project_update(project=project, overlap=2)
    prompts_import(project=project, records=records_from_items(rank_items(4)))
    Task.objects.filter(project=project).update(required_annotations=2)
    for user in (bob, dana, bob):
        a = assignment_claim_next(project=project, annotator=user)
        ranking = [{"completion": c, "rank": i + 1, "rating": 4}
                   for i, c in enumerate(sorted(a.display_order))]  # all agree
        annotation_submit(assignment=a, data={"ranking": ranking})
    agreement_refresh(project=project)
    login(page, "alice", f"/projects/{project.pk}/dashboard/")
    chart = page.locator("#throughput-chart")
    expect(chart).to_be_visible()
    bars = chart.locator("rect.bar")
    expect(bars).to_have_count(30)
    today = bars.nth(29)
    box = today.bounding_box()
    assert box is not None and box["height"] > 20  # today's bar holds the 3 annotations
    assert bars.nth(0).bounding_box()["height"] == 0
    expect(page.locator("#annotator-table")).to_contain_text("bob")
    # The agreement trend (one week, with the InstructGPT line) and the tau distribution.
    trend = page.locator("#trend-chart")
    expect(trend.locator("rect.bar")).to_have_count(1)
    assert trend.locator("rect.bar").bounding_box()["height"] > 20
    # A horizontal line has no height, so Playwright calls it hidden: measure its width.
    assert trend.locator("line.reference").bounding_box()["width"] > 300
    taus = page.locator("#tau-chart rect.bar")
    expect(taus).to_have_count(10)
    assert max(taus.nth(i).bounding_box()["height"] for i in range(10)) > 20
    page.problems.assert_clean()
    # The flags page draws its chart too.
    page.goto(page.url.replace("/dashboard/", "/flags/"))
    expect(page.locator("#flag-chart")).to_be_visible()
    page.problems.assert_clean()
