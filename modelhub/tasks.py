"""Celery entry points for modelhub: thin wrappers around services."""

from celery import shared_task

from modelhub.services.jobs import job_run, jobs_reconcile


# Generous limits: a job heartbeats and can run for hours; the reconciler, not a time
# limit, notices a dead worker. The queue comes with each message (the job's own).
@shared_task(name="modelhub.run_job", time_limit=48 * 3600, soft_time_limit=47 * 3600)
def run_job_task(job_id: int) -> bool:
    return job_run(job_id=job_id)


@shared_task(name="modelhub.reconcile_jobs", time_limit=120)
def reconcile_jobs_task() -> dict:
    return jobs_reconcile()
