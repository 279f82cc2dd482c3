"""The job mechanism every long task runs on (generation, evaluation, snapshots, training).

PostgreSQL holds a job's state; a Celery message (``modelhub.run_job``) only says "try
job N". ``job_run`` claims the row with one conditional UPDATE (queued -> running), so
a duplicated or redelivered message finds it taken and does nothing. While a handler
works, a heartbeat thread stamps the row; every write a handler makes goes through
``JobContext.fenced()``, which holds the row lock and checks that this worker still
owns the lease, so a worker that was given up on cannot write after its successor.
``jobs_reconcile`` (beat) re-queues running jobs whose heartbeat stopped, up to their
attempt cap, then fails them with the reason; and re-sends queued jobs whose message
seems lost.
"""

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from modelhub.models import Job

log = logging.getLogger(__name__)

HANDLERS: dict[str, Callable[["JobContext"], None]] = {}


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class JobLost(Exception):
    """This worker no longer owns the job (the reconciler gave it to another)."""


def job_handler(kind: str):
    """Register the function that runs jobs of a kind (it takes a JobContext)."""

    def register(function):
        HANDLERS[kind] = function
        return function

    return register


def worker_name() -> str:
    """Return a name for this process that is unique across machines."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def job_enqueue(job: Job) -> None:
    """Send "try job N" to the job's queue (call after the job row is committed)."""
    current_app.send_task("modelhub.run_job", args=[job.pk], queue=job.queue)


def job_create(*, project, kind: str, queue: str = "gpu", created_by=None, total: int = 0,
               max_attempts: int = 3) -> Job:
    """Create a queued job and send its message once the transaction commits."""
    job = Job.objects.create(
        project=project, kind=kind, queue=queue, created_by=created_by, total=total,
        max_attempts=max_attempts, heartbeat_at=timezone.now(),
    )
    transaction.on_commit(lambda: job_enqueue(job))
    return job


def job_cancel(*, job: Job) -> Job:
    """Cancel a job: at once when queued, at the handler's next check when running."""
    now = timezone.now()
    Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, cancel_requested=True, finished_at=now)
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job


def job_retry(*, job: Job, attempts: int = 3) -> bool:
    """Queue a failed or cancelled job again with ``attempts`` more tries; False if not.

    The handler starts over; one that checkpoints (training) goes on from its last
    checkpoint.
    """
    now = timezone.now()
    line = f"{now:%Y-%m-%d %H:%M:%S} queued again ({attempts} more attempts)\n"
    with transaction.atomic():
        queued = Job.objects.filter(
            pk=job.pk, status__in=[Job.Status.FAILED, Job.Status.CANCELLED]).update(
            status=Job.Status.QUEUED, cancel_requested=False, error="", finished_at=None,
            lease_owner="", heartbeat_at=now, max_attempts=F("attempts") + attempts,
            log=Concat(F("log"), Value(line)))
        if queued:
            transaction.on_commit(lambda: job_enqueue(job))
    job.refresh_from_db()
    return bool(queued)


class JobContext:
    """What a handler gets: its job, progress reporting, cancel checks and fenced writes."""

    def __init__(self, job: Job, worker: str):
        self.job = job
        self.worker = worker

    def _mine(self):
        return Job.objects.filter(pk=self.job.pk, lease_owner=self.worker,
                                  status=Job.Status.RUNNING)

    def check(self) -> None:
        """Raise JobCancelled if a cancel was asked, JobLost if the lease was taken away."""
        row = self._mine().values_list("cancel_requested", flat=True).first()
        if row is None:
            raise JobLost(f"job {self.job.pk} is no longer held by {self.worker}")
        if row:
            raise JobCancelled(f"job {self.job.pk} was cancelled")

    def progress(self, done: int, total: int | None = None) -> None:
        """Record progress (and the heartbeat), then check for cancel and lease loss."""
        fields = {"progress": done, "heartbeat_at": timezone.now()}
        if total is not None:
            fields["total"] = total
        self._mine().update(**fields)
        self.job.progress = done
        if total is not None:
            self.job.total = total
        self.check()

    def log(self, message: str) -> None:
        """Append a line to the job's log."""
        # Appended in the database (other writers, like the reconciler and a duplicated
        # message's note, append too), and only while this worker holds the job.
        line = f"{timezone.now():%Y-%m-%d %H:%M:%S} {message}\n"
        self._mine().update(log=Concat(F("log"), Value(line)))

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """Run the block in a transaction that holds the job row while this worker owns it.

        Anything written in the block commits only if the lease is still this worker's,
        so a worker that was presumed dead and replaced cannot duplicate its successor's
        writes.
        """
        with transaction.atomic():
            owned = (self._mine().select_for_update().values_list("cancel_requested", flat=True)
                     .first())
            if owned is None:
                raise JobLost(f"job {self.job.pk} is no longer held by {self.worker}")
            if owned:
                raise JobCancelled(f"job {self.job.pk} was cancelled")
            yield


def job_claim(*, job_id: int, worker: str) -> Job | None:
    """Take a queued job for this worker; None when it is not queued (or out of attempts)."""
    now = timezone.now()
    claimed = Job.objects.filter(
        pk=job_id, status=Job.Status.QUEUED, attempts__lt=F("max_attempts")
    ).update(
        status=Job.Status.RUNNING, lease_owner=worker, heartbeat_at=now,
        attempts=F("attempts") + 1, started_at=Coalesce(F("started_at"), now),
    )
    return Job.objects.get(pk=job_id) if claimed else None


def _finish(job: Job, worker: str, status: str, error: str = "") -> None:
    Job.objects.filter(pk=job.pk, lease_owner=worker, status=Job.Status.RUNNING).update(
        status=status, error=error, finished_at=timezone.now(), heartbeat_at=timezone.now())


class _Heartbeat(threading.Thread):
    """Stamp the job row every few seconds from a connection of its own."""

    def __init__(self, job_id: int, worker: str, interval: float):
        super().__init__(name=f"job-{job_id}-heartbeat", daemon=True)
        self.job_id, self.worker, self.interval = job_id, worker, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    Job.objects.filter(pk=self.job_id, lease_owner=self.worker,
                                       status=Job.Status.RUNNING).update(
                        heartbeat_at=timezone.now())
                except Exception:  # a database hiccup: the next beat tries again
                    log.exception("heartbeat of job %s failed", self.job_id)
        finally:
            connection.close()


def _can_beat_from_a_thread() -> bool:
    # An in-memory SQLite database (some tests) is private to one connection.
    return not (connection.vendor == "sqlite" and connection.is_in_memory_db())


def job_run(*, job_id: int, worker: str | None = None) -> bool:
    """Claim and run a job to its end; False when there was nothing to do."""
    worker = worker or worker_name()
    job = job_claim(job_id=job_id, worker=worker)
    if job is None:
        # A duplicated or late message: say so in the job's log, for whoever wonders.
        status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
        log.info("job %s: nothing to do (%s)", job_id, status or "no such job")
        if status is not None:
            Job.objects.filter(pk=job_id).update(log=Concat(
                F("log"), Value(f"{timezone.now():%Y-%m-%d %H:%M:%S} a message for this job "
                                f"reached {worker} while it was {status}: nothing to do\n")))
        return False
    context = JobContext(job, worker)
    beat = None
    if _can_beat_from_a_thread():
        beat = _Heartbeat(job.pk, worker, _setting("JOB_HEARTBEAT_SECONDS", 10))
        beat.start()
    try:
        context.log(f"attempt {job.attempts} of {job.max_attempts} on {worker}")
        context.check()
        HANDLERS[job.kind](context)
    except JobCancelled:
        _finish(job, worker, Job.Status.CANCELLED)
    except JobLost:
        log.warning("job %s was taken away from %s; stopping", job.pk, worker)
    except Exception as exc:
        log.exception("job %s failed", job.pk)
        detail = "".join(traceback.format_exception_only(exc)).strip()
        _finish(job, worker, Job.Status.FAILED, error=detail[:5000])
    else:
        _finish(job, worker, Job.Status.SUCCEEDED)
    finally:
        if beat is not None:
            beat.stopped.set()
            beat.join()
    return True


def jobs_reconcile(*, now=None) -> dict:
    """Re-queue running jobs whose heartbeat stopped (or fail them at the cap); re-send
    queued jobs whose message looks lost. Return how many of each."""
    now = now or timezone.now()
    stale_after = timedelta(seconds=_setting("JOB_STALE_SECONDS", 120))
    resend_after = timedelta(seconds=_setting("JOB_RESEND_SECONDS", 600))
    counts = {"requeued": 0, "failed": 0, "resent": 0}
    to_send: list[Job] = []
    with transaction.atomic():
        stale = (Job.objects.select_for_update(skip_locked=True)
                 .filter(status=Job.Status.RUNNING, heartbeat_at__lt=now - stale_after))
        for job in stale:
            note = (f"{now:%Y-%m-%d %H:%M:%S} worker {job.lease_owner} stopped heartbeating "
                    f"(last {job.heartbeat_at:%H:%M:%S}); ")
            if job.attempts >= job.max_attempts:
                job.status = Job.Status.FAILED
                job.error = (f"The worker running this job stopped {job.attempts} times "
                             f"(last: {job.lease_owner}); giving up after "
                             f"{job.max_attempts} attempts.")
                job.finished_at = now
                job.log += note + "failed\n"
                counts["failed"] += 1
            else:
                job.status = Job.Status.QUEUED
                job.log += note + "re-queued\n"
                to_send.append(job)
                counts["requeued"] += 1
            job.lease_owner = ""
            job.heartbeat_at = now
            job.save(update_fields=["status", "error", "finished_at", "log", "lease_owner",
                                    "heartbeat_at"])
        lost = (Job.objects.select_for_update(skip_locked=True)
                .filter(status=Job.Status.QUEUED, heartbeat_at__lt=now - resend_after))
        for job in lost:
            job.heartbeat_at = now
            job.save(update_fields=["heartbeat_at"])
            to_send.append(job)
            counts["resent"] += 1
        for job in to_send:
            transaction.on_commit(lambda job=job: job_enqueue(job))
    return counts
