"""manage.py recompute_agreement [--project ID]: recompute every stored agreement figure."""

import time

from django.core.management.base import BaseCommand, CommandError

from labeling.models import Project
from labeling.services.metrics import agreement_refresh


class Command(BaseCommand):
    help = "Recompute the stored inter-annotator agreement of one project or of all."

    def add_arguments(self, parser):
        parser.add_argument("--project", type=int, help="project id (default: all projects)")

    def handle(self, *args, **options):
        projects = Project.objects.all()
        if options["project"] is not None:
            projects = projects.filter(pk=options["project"])
            if not projects.exists():
                raise CommandError(f"no project with id {options['project']}")
        for project in projects:
            started = time.perf_counter()
            count = agreement_refresh(project=project, full=True)
            self.stdout.write(
                f"{project.pk} {project.name}: {count} tasks in "
                f"{time.perf_counter() - started:.2f} s"
            )
