"""A `preference_pairs` export of a large project: pairs per second and peak memory.

Builds a project with N ranking annotations (K=4; 4 annotators per task, about half the
rankings swap one neighbouring pair) directly in a fresh PostgreSQL database
(`laoshi_bench_export`, dropped at the end) with set-based SQL, then runs the snapshot
build (what a worker does for `POST /api/v1/projects/{id}/snapshots/`: every C(K,2) pair
of every annotator's ranking, JSONL per split, content hash) in a separate process, so
its peak RSS is the export's own. With `--sizes` it repeats the export at several
sizes to show that memory does not grow with the data.

    .venv/bin/python -m bench.export_bench [--annotations 1000000] [--sizes 100000,1000000]

Ends with one line: pairs=<n> seconds=<s> pairs_per_s=<rate> peak_rss_mb=<mb>
"""

import argparse
import cProfile
import json
import os
import pstats
import resource
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
DB = "laoshi_bench_export"
K = 4
PER_TASK = 4
CATEGORIES = ["generation", "open_qa", "brainstorming", "chat", "rewrite", "summarization",
              "classification", "closed_qa", "extract", "other"]


def _django(url: str, snapshot_root: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.bench", DATABASE_URL=url,
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64), LAOSHI_SNAPSHOT_ROOT=snapshot_root,
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def _build(annotations: int) -> int:
    """Fill the database with `annotations` rank annotations; return the project id."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from labeling.services.project import membership_add, project_create

    call_command("migrate", verbosity=0)
    lead = get_user_model().objects.create_user("lead")
    project = project_create(creator=lead, name="export bench", overlap=PER_TASK)
    users = [membership_add(project=project, username=f"a{i}", role="annotator",
                            password="correct-horse-battery")[0].user.pk for i in range(8)]
    tasks = annotations // PER_TASK
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO labeling_prompt (id, text, category, source, style, external_user_id,
                split, content_hash, prefix_hash, metadata, created_at, project_id)
            SELECT g, 'Prompt ' || g || ': explain, in a few friendly sentences, why the sky '
                      || 'looks blue in the day and red at sunset.',
                   (%s::text[])[1 + g %% 10], 'imported', 'plain', '',
                   CASE WHEN g %% 10 < 8 THEN 'train' WHEN g %% 10 = 8 THEN 'valid'
                        ELSE 'test' END,
                   md5(g::text), '', '{}', now(), %s
            FROM generate_series(1, %s) g""", [CATEGORIES, project.pk, tasks])
        cursor.execute("""
            INSERT INTO labeling_completion (id, text, source, generator, generation_params,
                created_at, prompt_id)
            SELECT (g - 1) * 4 + j + 1, 'Response ' || j || ' to prompt ' || g || ': the air '
                   || 'scatters short blue wavelengths more than long red ones, so ...',
                   'imported', 'bench', '{}', now(), g
            FROM generate_series(1, %s) g, generate_series(0, 3) j""", [tasks])
        cursor.execute("""
            INSERT INTO labeling_task (id, kind, required_annotations, assigned_count,
                submitted_count, priority, status, is_gold, created_at, project_id, prompt_id)
            SELECT g, 'rank', %s, %s, %s, 0, 'complete', false, now(), %s, g
            FROM generate_series(1, %s) g""",
                       [PER_TASK, PER_TASK, PER_TASK, project.pk, tasks])
        cursor.execute("""
            INSERT INTO labeling_taskcompletion (id, position, completion_id, task_id)
            SELECT (g - 1) * 4 + j + 1, j, (g - 1) * 4 + j + 1, g
            FROM generate_series(1, %s) g, generate_series(0, 3) j""", [tasks])
        cursor.execute("""
            INSERT INTO labeling_assignment (id, state, display_order, skip_reason, created_at,
                expires_at, finished_at, annotator_id, project_id, task_id)
            SELECT (g - 1) * %s + a + 1, 'submitted',
                   jsonb_build_array((g-1)*4+1, (g-1)*4+2, (g-1)*4+3, (g-1)*4+4), '', now(),
                   now(), now(), (%s::int[])[1 + (g + a) %% 8], %s, g
            FROM generate_series(1, %s) g, generate_series(0, %s) a""",
                       [PER_TASK, users, project.pk, tasks, PER_TASK - 1])
        # rank of response j: j + 1, except that about half the rankings swap the pair
        # at position s = (g + a) %% 3 (label noise).
        rank = ("CASE WHEN sw AND {j} = s THEN s + 2 WHEN sw AND {j} = s + 1 THEN s + 1 "
                "ELSE {j} + 1 END")
        entries = ", ".join(
            f"jsonb_build_object('completion', (g - 1) * 4 + {j + 1}, 'rank', "
            f"{rank.format(j=j)}, 'rating', 7 - ({rank.format(j=j)}), 'flags', '[]'::jsonb)"
            for j in range(K))
        cursor.execute(f"""
            INSERT INTO labeling_annotation (id, kind, ranking, text, comment, created_at,
                annotator_id, assignment_id, project_id, task_id, review_comment,
                review_status, idempotency_key, responses, flagged_responses)
            SELECT (g - 1) * %s + a + 1, 'rank', jsonb_build_array({entries}), '', '', now(),
                   (%s::int[])[1 + (g + a) %% 8], (g - 1) * %s + a + 1, %s, g, '', 'pending',
                   '', 4, 0
            FROM (SELECT g, a, (g + a) %% 3 AS s, (g * 7 + a * 13) %% 2 = 0 AS sw
                  FROM generate_series(1, %s) g, generate_series(0, %s) a) x""",
                       [PER_TASK, users, PER_TASK, project.pk, tasks, PER_TASK - 1])
        for table in ("labeling_prompt", "labeling_completion", "labeling_task",
                      "labeling_taskcompletion", "labeling_assignment", "labeling_annotation"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"(SELECT max(id) FROM {table}))")
        cursor.execute("ANALYZE")
    print(f"built {tasks} tasks, {tasks * PER_TASK} annotations in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return project.pk


def _export(project_id: int) -> dict:
    """Create and build a preference_pairs snapshot here; return its figures."""
    from labeling.models import Project
    from modelhub.services.jobs import job_run
    from training.models import DatasetSnapshot
    from training.services.snapshots import snapshot_create

    project = Project.objects.get(pk=project_id)
    snapshot = snapshot_create(project=project, name="bench", kind="preference_pairs")
    profiler = cProfile.Profile() if os.environ.get("EXPORT_PROFILE") else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    job_run(job_id=snapshot.job_id, worker="bench")
    seconds = time.perf_counter() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    snapshot = DatasetSnapshot.objects.select_related("job").get(pk=snapshot.pk)
    assert snapshot.job.status == "succeeded", snapshot.job.error
    pairs = sum(snapshot.row_counts.values())
    return {"pairs": pairs, "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=1_000_000)
    parser.add_argument("--sizes", default="", help="comma-separated annotation counts")
    parser.add_argument("--profile", action="store_true",
                        help="print the export's top functions (cProfile) to stderr")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--export-only", type=int, help=argparse.SUPPRESS)  # a project id
    parser.add_argument("--snapshot-root", default=str(ROOT / "var" / "bench" / "snapshots"))
    args = parser.parse_args()
    base = args.postgres_url.rsplit("/", 1)[0]
    url = f"{base}/{DB}"
    if args.export_only:
        _django(url, args.snapshot_root)
        print(json.dumps(_export(args.export_only)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s] or [args.annotations]
    result = None
    for size in sizes:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB}")
            conn.execute(f"CREATE DATABASE {DB}")
        try:
            _django(url, args.snapshot_root)
            project_id = _build(size)
            from django.db import connections

            connections.close_all()
            out = subprocess.run(
                [sys.executable, "-m", "bench.export_bench", "--export-only", str(project_id),
                 "--postgres-url", args.postgres_url, "--snapshot-root", args.snapshot_root],
                cwd=ROOT, check=True, capture_output=True, text=True,
                env={**os.environ, "EXPORT_PROFILE": "1" if args.profile else ""})
            if args.profile:
                print(out.stderr)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"annotations={size} pairs={result['pairs']} seconds={result['seconds']:.1f} "
                  f"pairs_per_s={result['pairs'] / result['seconds']:.0f} "
                  f"peak_rss_mb={result['peak_rss_mb']:.0f}", flush=True)
        finally:
            shutil.rmtree(args.snapshot_root, ignore_errors=True)  # gigabytes at 1M
            from django.db import connections

            connections.close_all()
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DB}")
    print(f"pairs={result['pairs']} seconds={result['seconds']:.1f} "
          f"pairs_per_s={result['pairs'] / result['seconds']:.0f} "
          f"peak_rss_mb={result['peak_rss_mb']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
