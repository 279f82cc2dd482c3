"""Celery entry points for labeling: thin wrappers around services."""

from celery import shared_task

from labeling.models import Project
from labeling.services.assignment import leases_expire
from labeling.services.figures import figures_refresh
from labeling.services.importing import prompt_import_run
from labeling.services.metrics import agreement_refresh


@shared_task(name="labeling.prompt_import", time_limit=3600,
             soft_time_limit=3500)
def prompt_import_task(prompt_import_id: int) -> None:
    prompt_import_run(prompt_import_id=prompt_import_id)


@shared_task(name="labeling.expire_leases", time_limit=120)
def expire_leases_task() -> int:
    total = 0
    while (expired := leases_expire()) > 0:
        total += expired
    return total


@shared_task(name="labeling.refresh_agreement", time_limit=600)
def refresh_agreement_task() -> int:
    """Refresh every project's stored agreement, then its dashboard figures if it changed."""
    refreshed = 0
    for project in Project.objects.all():
        refreshed += agreement_refresh(project=project)
        figures_refresh(project=project)
    return refreshed
