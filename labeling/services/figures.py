"""Stored dashboard figures: progress, throughput, the annotator table and flag rates.

Each of these scans a project's annotations (hundreds of milliseconds at 100,000), so
the periodic job computes them when the project changed and pages read one row.
"""

from django.db.models import Count, Max
from django.utils import timezone

from labeling import selectors
from labeling.models import Annotation, Assignment, ProjectFigures


def _watermark(project) -> list:
    # A new annotation raises the max id; a skip adds a finished assignment; the day
    # rolls the throughput window and the 24-hour activity.
    last = Annotation.objects.filter(project=project).aggregate(n=Max("id"))["n"]
    skipped = Assignment.objects.filter(
        project=project, state=Assignment.State.SKIPPED
    ).aggregate(n=Count("id"))["n"]
    return [last or 0, skipped, timezone.localdate().isoformat()]


def figures_refresh(*, project, force: bool = False) -> ProjectFigures:
    """Recompute and store the project's dashboard figures if anything changed."""
    watermark = _watermark(project)
    stored = ProjectFigures.objects.filter(project=project).first()
    if stored and stored.watermark == watermark and not force:
        return stored
    figures, _ = ProjectFigures.objects.update_or_create(
        project=project,
        defaults={
            "stats": selectors.project_stats(project=project),
            "annotators": selectors.annotator_numbers(project=project),
            "flags": selectors.flag_rates(project=project),
            "watermark": watermark,
        },
    )
    return figures


def project_figures(*, project) -> ProjectFigures:
    """Return the stored figures, computing them now the first time."""
    return ProjectFigures.objects.filter(project=project).first() or figures_refresh(
        project=project
    )
