"""manage.py import_prompts --project ID FILE: import a JSONL or CSV file of prompts."""

from django.core.management.base import BaseCommand, CommandError

from labeling.management.reporting import report_bad_lines
from labeling.models import Project
from labeling.services.importing import prompts_import_file


class Command(BaseCommand):
    help = (
        "Import prompts from a JSONL or CSV file. Every line is validated; if any line is "
        "bad nothing is imported (unless --skip-bad-lines) and each bad line is reported."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="path to a .jsonl or .csv file (UTF-8)")
        parser.add_argument("--project", type=int, required=True, help="project id")
        parser.add_argument("--skip-bad-lines", action="store_true",
                            help="import the good lines and report the bad ones")
        parser.add_argument("--no-demonstrate-tasks", action="store_true",
                            help="do not create a demonstration task per prompt")
        parser.add_argument("--source", choices=["imported", "api_log"], default="imported")

    def handle(self, *args, **options):
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"no project with id {options['project']}")
        try:
            handle = open(options["file"], "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CommandError(f"cannot open {options['file']}: {exc}") from exc
        with handle:
            report = prompts_import_file(
                project=project,
                file=handle,
                file_name=options["file"],
                skip_bad_lines=options["skip_bad_lines"],
                create_demonstrate_tasks=not options["no_demonstrate_tasks"],
                source=options["source"],
            )
        report_bad_lines(self, report)
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.added} added, {report.duplicates} duplicates, {report.capped} over "
                f"the per-user cap, {report.tasks_created} tasks created"
            )
        )
