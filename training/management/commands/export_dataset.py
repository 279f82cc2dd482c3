"""manage.py export_dataset: build a dataset snapshot here and copy its files to a folder.

    manage.py export_dataset --project 1 --kind preference_pairs --split train --split valid \
        --min-agreement 0.6 --exclude-flag contains_pii --out exports/rm-v1

The snapshot is recorded like one made in the browser (same filter, same hash); the
build runs in this process with a progress bar, no worker needed.
"""

import shutil
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from tqdm import tqdm

from labeling.models import Project
from modelhub.models import Job
from modelhub.services.jobs import job_run, worker_name
from training.models import DatasetSnapshot
from training.services.snapshots import SnapshotError, snapshot_create


class Command(BaseCommand):
    help = "Build a dataset snapshot of a project and write its files to a directory."

    def add_arguments(self, parser):
        parser.add_argument("--project", type=int, required=True)
        parser.add_argument("--kind", required=True, choices=DatasetSnapshot.Kind.values)
        parser.add_argument("--out", required=True, help="directory to write the files to")
        parser.add_argument("--name", default="")
        parser.add_argument("--split", action="append", dest="splits", default=[])
        parser.add_argument("--category", action="append", dest="categories", default=[])
        parser.add_argument("--since", help="annotations from this date (YYYY-MM-DD)")
        parser.add_argument("--until", help="annotations up to this date")
        parser.add_argument("--min-agreement", type=float)
        parser.add_argument("--exclude-flag", action="append", dest="exclude_flags",
                            default=[])
        parser.add_argument("--exclude-annotator", action="append", type=int,
                            dest="exclude_annotators", default=[])
        parser.add_argument("--exclude-paused", action="store_true")
        parser.add_argument("--accepted-only", action="store_true",
                            help="sft: only demonstrations a lead accepted")
        parser.add_argument("--merge", default="per_annotator",
                            choices=DatasetSnapshot.Merge.values)
        parser.add_argument("--pairs", default="all", choices=DatasetSnapshot.PairPolicy.values)
        parser.add_argument("--margin", action="store_true")
        parser.add_argument("--parquet", action="store_true")
        parser.add_argument("--license", default="other")

    def handle(self, *args, **options):
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"no project {options['project']}")
        filters = {key: options[key] for key in (
            "splits", "categories", "since", "until", "min_agreement", "exclude_flags",
            "exclude_annotators", "exclude_paused", "accepted_only") if options[key]}
        try:
            snapshot = snapshot_create(
                project=project, name=options["name"], kind=options["kind"],
                filters=filters, merge=options["merge"], pair_policy=options["pairs"],
                margin=options["margin"], parquet=options["parquet"],
                license=options["license"])
        except SnapshotError as error:
            raise CommandError(str(error)) from error
        self._build(snapshot.job_id)
        snapshot.refresh_from_db()
        job = snapshot.job
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"snapshot {snapshot.pk} {job.status}: {job.error}")
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        for path in Path(snapshot.directory).iterdir():
            shutil.copy2(path, out / path.name)
        counts = ", ".join(f"{split} {n}" for split, n in snapshot.row_counts.items())
        self.stdout.write(f"Snapshot {snapshot.pk} ({snapshot.content_hash[:12]}): {counts} "
                          f"rows -> {out}")

    def _build(self, job_id: int) -> None:
        """Run the job in a thread while the bar follows its progress from the database."""
        if connection.in_atomic_block or (connection.vendor == "sqlite"
                                          and connection.is_in_memory_db()):
            # A second thread could not see this transaction's snapshot row, nor share an
            # in-memory database (tests): build here, without a bar.
            job_run(job_id=job_id, worker=f"cli:{worker_name()}")
            return
        failure: list[BaseException] = []

        def work():
            try:
                job_run(job_id=job_id, worker=f"cli:{worker_name()}")
            except BaseException as exc:  # re-raised below, in the command's thread
                failure.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=work, name="export")
        thread.start()
        with tqdm(total=0, unit="item", file=self.stderr._out) as bar:
            while thread.is_alive():
                thread.join(0.5)
                job = Job.objects.only("progress", "total").get(pk=job_id)
                bar.total = job.total
                bar.n = job.progress
                bar.refresh()
        if failure:
            raise failure[0]
