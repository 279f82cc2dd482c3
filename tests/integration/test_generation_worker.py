"""Generation jobs on a real Celery worker (gpu queue) through Redis: end to end, and a
worker SIGKILLed mid-job, noticed by the reconciler and finished by another worker."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from labeling.models import Completion, Prompt, Task, TaskCompletion
from labeling.services.importing import prompts_import, records_from_items
from modelhub.ml.tiny import tiny_test_model
from modelhub.models import Job
from modelhub.services.generation import generation_job_create
from modelhub.services.jobs import job_enqueue, jobs_reconcile
from modelhub.services.registry import model_register

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def base(project, settings, tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path / "models"
    tiny_test_model(root / "tiny", seed=0)
    settings.MODEL_ROOT = root
    settings.MODEL_REGISTRY_ROOTS = [root]
    return model_register(project=project, name="tiny", kind="base", path=str(root / "tiny"))


def _prompts(project, n):
    items = [{"prompt": f"Write two sentences about the number {i}.", "user_id": f"u{i}"}
             for i in range(n)]
    prompts_import(project=project, records=records_from_items(items),
                   create_demonstrate_tasks=False)


def _wait(job_id, done, worker, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if done(job) or worker.poll() is not None:
            return job
        time.sleep(0.1)
    return Job.objects.get(pk=job_id)


def _generate(project, base, tokens):
    return generation_job_create(
        project=project, prompt_filter={"selection": "no_rank_task"},
        samplers=[{"model": base.pk, "count": 2, "temperature": 1.0, "max_new_tokens": tokens,
                   "seed": 1},
                  {"model": base.pk, "count": 2, "temperature": 0.8, "max_new_tokens": tokens,
                   "seed": 2}])


def test_a_generation_job_runs_end_to_end_on_the_worker(start_worker, project, base):
    worker = start_worker("gpu")
    _prompts(project, 5)
    generation = _generate(project, base, tokens=6)  # the message goes out on commit
    job = _wait(generation.job_id, lambda j: not j.is_active, worker)
    assert worker.poll() is None, "the worker died"
    assert job.status == Job.Status.SUCCEEDED, job.error
    tasks = Task.objects.filter(project=project, kind=Task.Kind.RANK)
    assert tasks.count() == 5
    assert all(TaskCompletion.objects.filter(task=t).count() == 4 for t in tasks)
    # The same message delivered again (a redelivery): the worker takes it and does nothing
    # (the task returns False: the job was not queued).
    job_enqueue(job)
    job = _wait(job.pk, lambda j: "nothing to do" in j.log, worker, seconds=30)
    assert "nothing to do" in job.log
    assert Job.objects.get(pk=job.pk).attempts == 1
    assert Completion.objects.filter(generation_params__job=job.pk).count() == 20
    worker.terminate()
    output, _ = worker.communicate(timeout=20)
    assert "modelhub.run_job" in output and "succeeded" in output
    assert ": True" in output


def test_a_killed_worker_is_noticed_and_the_job_finishes_without_duplicates(start_worker,
                                                                            project, base):
    first = start_worker("gpu", name="first")
    _prompts(project, 48)  # three chunks of 16: the kill lands after the first
    generation = _generate(project, base, tokens=32)
    job = _wait(generation.job_id, lambda j: j.progress > 0, first)
    assert job.status == Job.Status.RUNNING and 0 < job.progress < job.total, job.error
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=20)
    killed_at = Job.objects.get(pk=job.pk).progress
    # The heartbeat has stopped: the reconciler re-queues it (as if its time had come).
    counts = jobs_reconcile(now=timezone.now() + timedelta(hours=1))
    assert counts["requeued"] == 1
    second = start_worker("gpu", name="second")
    job = _wait(job.pk, lambda j: not j.is_active, second, seconds=240)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.attempts == 2 and "re-queued" in job.log and "resuming" in job.log
    assert job.progress == job.total == 48 and killed_at < 48
    per_prompt = (Completion.objects.filter(generation_params__job=job.pk)
                  .values("prompt_id").annotate(n=Count("id")))
    assert sorted(row["n"] for row in per_prompt) == [4] * 48  # no prompt done twice
    assert Task.objects.filter(project=project, kind=Task.Kind.RANK).count() == 48
    assert Prompt.objects.filter(project=project).count() == 48
