"""manage.py import_preferences --project ID --format trl|oasst --source NAME FILE.

Import existing preference data (TRL pairs or OpenAssistant trees, JSON Lines, optionally
gzipped) as prompts, completions and ranked tasks; see labeling.services.preference_import.
"""

import gzip

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from labeling.management.reporting import report_bad_lines
from labeling.models import Project
from labeling.services.preference_import import FORMATS, preferences_import_file


class Command(BaseCommand):
    help = (
        "Import preference data from a JSONL file (.jsonl or .jsonl.gz): TRL "
        "{prompt, chosen, rejected} lines or OpenAssistant message trees. Every line is "
        "validated; if any line is bad nothing is imported (unless --skip-bad-lines) and "
        "each bad line is reported."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="path to a .jsonl or .jsonl.gz file (UTF-8)")
        parser.add_argument("--project", type=int, required=True, help="project id")
        parser.add_argument("--format", dest="fmt", choices=FORMATS, required=True,
                            help="trl: prompt/chosen/rejected lines; oasst: message trees")
        parser.add_argument("--source", required=True,
                            help="where the data comes from, e.g. hh-rlhf (recorded on "
                                 "every row; names the imported annotators)")
        parser.add_argument("--annotator",
                            help="record every preference as this user's (default: users "
                                 "imported:SOURCE:N, one per preference of a prompt)")
        parser.add_argument("--skip-bad-lines", action="store_true",
                            help="import the good lines and report the bad ones")

    def handle(self, *args, **options):
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"no project with id {options['project']}")
        annotator = None
        if options["annotator"]:
            annotator = get_user_model().objects.filter(username=options["annotator"]).first()
            if annotator is None:
                raise CommandError(f"no user named {options['annotator']}")
        path = options["file"]
        opener = gzip.open if path.endswith(".gz") else open
        try:
            handle = opener(path, "rb")
        except OSError as exc:
            raise CommandError(f"cannot open {path}: {exc}") from exc
        try:
            with handle:
                report = preferences_import_file(
                    project=project,
                    file=handle,
                    fmt=options["fmt"],
                    source=options["source"],
                    annotator=annotator,
                    skip_bad_lines=options["skip_bad_lines"],
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except (OSError, EOFError) as exc:  # e.g. a truncated or not-gzip .gz file
            raise CommandError(f"cannot read {path}: {exc}") from exc
        report_bad_lines(self, report)
        summary = (
            f"{report.preferences} preferences imported: {report.added} prompts, "
            f"{report.completions} responses, {report.tasks_created} rank tasks; "
            f"{report.duplicates} duplicates left out"
        )
        if report.no_preferences:
            summary += f"; {report.no_preferences} trees without ranked replies"
        if report.bad_lines:
            summary += f"; {report.bad_lines} bad lines skipped"
        self.stdout.write(self.style.SUCCESS(summary))
