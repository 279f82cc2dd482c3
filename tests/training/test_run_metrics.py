"""A run's logged figures: one row per step, merged within a step, the newest kept apart."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from modelhub.models import Job, ModelVersion
from training.models import DatasetSnapshot, RunMetric, TrainingRun
from training.services.runs import run_metrics_write

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(project):
    def job(kind):
        return Job.objects.create(project=project, kind=kind, queue="gpu")

    snapshot = DatasetSnapshot.objects.create(project=project, name="d", kind="sft",
                                              job=job(Job.Kind.SNAPSHOT), content_hash="a")
    base = ModelVersion.objects.create(project=project, name="base", kind="base",
                                       artifact_path="/m")
    return TrainingRun.objects.create(project=project, job=job(Job.Kind.TRAINING), kind="sft",
                                      snapshot=snapshot, parent=base)


def test_a_step_is_one_row_and_its_logs_merge(run):
    run_metrics_write(run_id=run.pk, step=1, values={"loss": 2.0}, latest={"loss": 2.0})
    run_metrics_write(run_id=run.pk, step=2, values={"loss": 1.5}, latest={"loss": 1.5})
    run_metrics_write(run_id=run.pk, step=2, values={"loss": 1.5, "eval_loss": 1.7},
                      latest={"loss": 1.5, "eval_loss": 1.7})
    run.refresh_from_db()
    assert run.series() == [{"step": 1, "loss": 2.0},
                            {"step": 2, "loss": 1.5, "eval_loss": 1.7}]
    assert run.latest == {"loss": 1.5, "eval_loss": 1.7}
    assert RunMetric.objects.filter(run=run).count() == 2


def test_logging_a_step_costs_the_same_however_long_the_run(run):
    RunMetric.objects.bulk_create(RunMetric(run=run, step=s, values={"loss": 1.0 / s})
                                  for s in range(1, 5001))
    with CaptureQueriesContext(connection) as queries:
        run_metrics_write(run_id=run.pk, step=5001, values={"loss": 0.1}, latest={"loss": 0.1})
    written = sum(len(q["sql"]) for q in queries.captured_queries)
    assert written < 1000  # one row and the newest values, not the 5,000-step series
    assert len(run.series()) == 5001
