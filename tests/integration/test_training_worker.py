"""A training run on a real Celery worker (gpu queue) through Redis, whose worker is
SIGKILLed mid-run: the orphaned trainer stops, the reconciler re-queues the job, and a
second worker resumes from the last complete checkpoint to the end."""

import os
import shutil
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from modelhub.models import Job
from modelhub.services.jobs import jobs_reconcile
from modelhub.services.registry import model_register
from tests.training.helpers import demonstration_snapshot
from training.models import TrainingRun
from training.services.runs import run_create

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _wait(run_id, done, seconds=180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = TrainingRun.objects.select_related("job").get(pk=run_id)
        if done(run):
            return run
        time.sleep(0.2)
    return TrainingRun.objects.select_related("job").get(pk=run_id)


def test_a_killed_worker_s_run_resumes_from_its_last_checkpoint(start_worker, project, bob,
                                                                 run_roots, tiny_model):
    tmp_path = run_roots
    shutil.copytree(tiny_model, tmp_path / "models" / "base")
    base = model_register(project=project, name="base", kind="base",
                          path=str(tmp_path / "models" / "base"))
    snapshot = demonstration_snapshot(project, bob, 8)
    first = start_worker("gpu", name="first")  # env: the test database, Redis
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base, config={
        "max_steps": 200, "learning_rate": 3e-3, "per_device_train_batch_size": 2,
        "logging_steps": 1, "save_steps": 3, "warmup_ratio": 0.0})
    run = _wait(run.pk, lambda r: r.step >= 7 or not r.job.is_active)
    assert run.job.status == Job.Status.RUNNING and 7 <= run.step < 200, run.job.error
    os.kill(first.pid, signal.SIGKILL)  # the worker dies; its trainer is orphaned
    first.wait(timeout=20)
    # The orphaned trainer notices at its next step and stops: the step count freezes.
    last, still_since, deadline = -1, time.monotonic(), time.monotonic() + 60
    while time.monotonic() < deadline and time.monotonic() - still_since < 3:
        step = TrainingRun.objects.get(pk=run.pk).step
        if step != last:
            last, still_since = step, time.monotonic()
        time.sleep(0.2)
    assert time.monotonic() - still_since >= 3, "the orphaned trainer kept training"
    assert last < 200
    assert jobs_reconcile(now=timezone.now() + timedelta(hours=1))["requeued"] == 1
    second = start_worker("gpu", name="second")
    run = _wait(run.pk, lambda r: not r.job.is_active, seconds=400)
    assert second.poll() is None
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert run.job.attempts == 2 and run.step == 200
    logged = sorted(m["step"] for m in run.series() if "loss" in m)
    assert logged == list(range(1, 201))  # continuous: nothing lost, nothing twice
    assert "re-queued" in run.job.log
    assert run.output_model is not None and run.output_model.parent_id == base.pk
