"""What the import commands print about bad lines."""

from django.core.management.base import BaseCommand, CommandError


def report_bad_lines(command: BaseCommand, report) -> None:
    """Print an import report's line errors; raise CommandError when nothing was imported."""
    for error in report.errors:
        command.stderr.write(f"line {error['line']}: {error['message']}")
    if report.bad_lines > len(report.errors):
        command.stderr.write(f"... and {report.bad_lines - len(report.errors)} more bad lines")
    if not report.imported:
        raise CommandError(
            f"{report.bad_lines} bad line(s) out of {report.lines}: nothing was imported "
            "(fix them, or pass --skip-bad-lines)"
        )
