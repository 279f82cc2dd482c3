"""A training run's page in headless Chromium: live SVG charts, refreshed by htmx, no CSP trip."""

import pytest
from playwright.sync_api import expect

from modelhub.models import Job, ModelVersion
from tests.e2e.conftest import TIMEOUT_MS, login
from tests.training.helpers import log_metrics
from training.models import DatasetSnapshot, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The run page polls every 3 s: a change shows within a few polls.
POLL_WAIT_MS = 12_000


def _running_sft_run(project) -> TrainingRun:
    """Return a running SFT run with ten logged steps (rows only: nothing trains)."""
    base = ModelVersion.objects.create(project=project, name="tiny-base", kind="base",
                                       artifact_path="/models/tiny-base")
    snapshot = DatasetSnapshot.objects.create(
        project=project, name="demos", kind="sft", content_hash="f" * 64,
        row_counts={"train": 12},
        job=Job.objects.create(project=project, kind=Job.Kind.SNAPSHOT, queue="default",
                               status=Job.Status.SUCCEEDED))
    job = Job.objects.create(project=project, kind=Job.Kind.TRAINING, queue="gpu",
                             status=Job.Status.RUNNING, attempts=1, progress=10, total=50)
    metrics = [{"step": step, "loss": 2.0 / step} for step in range(1, 11)]
    metrics[4]["eval_loss"], metrics[9]["eval_loss"] = 0.9, 0.6
    run = TrainingRun.objects.create(project=project, job=job, kind="sft", snapshot=snapshot,
                                     parent=base)
    log_metrics(run, metrics)
    return run


def test_the_run_page_draws_its_loss_chart_and_keeps_it_live(page, project):
    run = _running_sft_run(project)
    login(page, "alice", f"/runs/{run.pk}/")
    # login() may return before the redirect lands: its glob matches "?next=/runs/N/" too.
    expect(page.locator("h1")).to_contain_text(f"Training run #{run.pk}", timeout=TIMEOUT_MS)
    lines = page.locator("#loss-chart svg polyline.series")
    expect(lines).to_have_count(2)
    box = lines.first.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 50  # a falling loss
    assert lines.first.get_attribute("points").count(",") == 10
    expect(page.locator(".run-steps")).to_have_text("step 10 of 50")

    # The numbers, opened, stay open while the page polls in the next step's values.
    page.click("#loss-chart-numbers summary")
    numbers = page.locator("#loss-chart-numbers")
    expect(numbers.locator("table")).to_be_visible()
    log_metrics(run, [{"step": 11, "loss": 0.123}])
    Job.objects.filter(pk=run.job_id).update(progress=11)
    expect(numbers).to_contain_text("0.123", timeout=POLL_WAIT_MS)
    expect(numbers).to_have_attribute("open", "")
    expect(page.locator(".run-steps")).to_have_text("step 11 of 50")
    assert lines.first.get_attribute("points").count(",") == 11

    # Finished: the last poll brings the final state and polling stops.
    Job.objects.filter(pk=run.job_id).update(status=Job.Status.SUCCEEDED)
    expect(page.locator("#run-live .job-status")).to_have_text("Succeeded", timeout=POLL_WAIT_MS)
    expect(page.locator("#run-live")).not_to_have_attribute("hx-trigger", "every 3s")
    page.problems.assert_clean()
