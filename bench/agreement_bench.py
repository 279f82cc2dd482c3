"""Full recompute of stored agreement, the agreement API and the lead's pages, at scale.

Builds a project with N rank tasks (K=4) each ranked by A annotators directly in a
fresh PostgreSQL database (`laoshi_bench_agreement`, dropped at the end): ratings near
the annotator's rank, a flag on about 8% of responses, times per task and annotation
dates over ten weeks. Then times `agreement_refresh(full=True)` (what `manage.py
recompute_agreement` runs) on empty tables and again on stored rows, the periodic
computation of the stored dashboard figures (`figures_refresh`), and the median
server time (in-process test client, 10 requests each) of the agreement API, the
dashboard, the flags page, the disagreement explorer and the annotator CSV.

    .venv/bin/python -m bench.agreement_bench [--tasks 100000] [--annotators 3] [--profile]

Ends with one line: tasks=<n> annotations=<m> recompute_s=<s> recompute_again_s=<s>
figures_s=<s> api_ms=<ms> dashboard_ms=<ms> flags_ms=<ms> disagreements_ms=<ms> csv_ms=<ms>
"""

import argparse
import cProfile
import os
import pstats
import random
import secrets
import sys
import time
from datetime import timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
DB = "laoshi_bench_agreement"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--annotators", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="print the recompute's top functions by cumulative time, and "
                             "the slowest queries of each page")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    base = args.postgres_url.rsplit("/", 1)[0]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.bench",
        DATABASE_URL=f"{base}/{DB}",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
    )
    sys.path.insert(0, str(ROOT))
    try:
        return _run(args)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB}")


def _run(args) -> int:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from labeling.agreement import ranking_summary
    from labeling.models import (
        Annotation,
        Assignment,
        Category,
        Completion,
        Prompt,
        Task,
        TaskCompletion,
    )
    from labeling.services.figures import figures_refresh
    from labeling.services.metrics import agreement_refresh
    from labeling.services.project import membership_add, project_create

    call_command("migrate", verbosity=0)
    User = get_user_model()
    lead = User.objects.create_user("lead")
    project = project_create(creator=lead, name="agreement bench", overlap=args.annotators)
    people = [
        membership_add(project=project, username=f"a{i}", role="annotator",
                       password="correct-horse-battery")[0].user
        for i in range(max(args.annotators * 2, 6))
    ]
    rng = random.Random(0)
    now = timezone.now()
    categories = [c for c, _ in Category.choices]
    flags = list(project.flags)
    started = time.perf_counter()
    batch = 5000
    for start in range(0, args.tasks, batch):
        n = min(batch, args.tasks - start)
        prompts = Prompt.objects.bulk_create([
            Prompt(project=project, text=f"prompt {start + i}", split="train",
                   category=categories[(start + i) % len(categories)],
                   content_hash=f"{start + i:064d}") for i in range(n)])
        completions = Completion.objects.bulk_create([
            Completion(prompt=p, text=f"answer {j}") for p in prompts for j in range(4)])
        tasks = Task.objects.bulk_create([
            Task(project=project, kind="rank", prompt=p, required_annotations=args.annotators,
                 assigned_count=args.annotators, submitted_count=args.annotators,
                 status="complete") for p in prompts])
        TaskCompletion.objects.bulk_create([
            TaskCompletion(task=t, completion=completions[4 * i + j], position=j)
            for i, t in enumerate(tasks) for j in range(4)])
        assignments, annotations = [], []
        for i, task in enumerate(tasks):
            ids = [completions[4 * i + j].pk for j in range(4)]
            truth = ids[:]
            rng.shuffle(truth)
            for person in rng.sample(people, args.annotators):
                order = truth[:]
                if rng.random() < 0.5:  # label noise: swap a neighbouring pair
                    k = rng.randrange(3)
                    order[k], order[k + 1] = order[k + 1], order[k]
                assignment = Assignment(task=task, annotator=person, project=project,
                                        state="submitted", display_order=ids,
                                        expires_at=now + timedelta(minutes=30))
                assignments.append(assignment)
                annotations.append((assignment, person, [
                    {"completion": c, "rank": order.index(c) + 1,
                     "rating": max(1, min(7, 7 - order.index(c) * 2 + rng.randint(-1, 1))),
                     "flags": [rng.choice(flags)] if rng.random() < 0.08 else []}
                    for c in ids]))
        Assignment.objects.bulk_create(assignments)
        rows = []
        for a, person, ranking in annotations:
            rho, flagged, shown = ranking_summary(ranking)
            rows.append(Annotation(
                assignment=a, task=a.task, annotator=person, project=project, kind="rank",
                ranking=ranking, position_rho=rho, flagged_responses=flagged, responses=shown,
                time_spent_ms=rng.randint(8_000, 120_000)))
        Annotation.objects.bulk_create(rows)
    with connection.cursor() as cursor:  # spread over ten weeks (auto_now_add set them all)
        cursor.execute(f"UPDATE {Annotation._meta.db_table} SET created_at = created_at - "
                       f"(task_id % 70) * interval '1 day'")
    total = Annotation.objects.count()
    print(f"built {args.tasks} tasks, {total} annotations in {time.perf_counter() - started:.1f} s")

    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    agreement_refresh(project=project, full=True)
    if profiler:
        profiler.disable()
    recompute_s = time.perf_counter() - started
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    print(f"full recompute: {recompute_s:.2f} s")
    started = time.perf_counter()
    agreement_refresh(project=project, full=True)
    again_s = time.perf_counter() - started
    print(f"full recompute on stored rows: {again_s:.2f} s")

    token = Token.objects.create(user=lead).key
    client = Client(HTTP_AUTHORIZATION=f"Token {token}", HTTP_HOST="127.0.0.1")
    url = f"/api/v1/projects/{project.pk}/agreement/"
    client.get(url)
    timings = []
    for _ in range(20):
        t = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - t) * 1000)
    body = response.json()
    timings.sort()
    api_ms = timings[len(timings) // 2]
    print(f"agreement {body['agreement']:.3f} [{body['interval'][0]:.3f}, "
          f"{body['interval'][1]:.3f}] over {body['tasks']} tasks; API median {api_ms:.1f} ms")
    started = time.perf_counter()
    figures_refresh(project=project, force=True)
    figures_s = time.perf_counter() - started
    print(f"dashboard figures computed (periodic job): {figures_s:.2f} s")
    pages = {}
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(lead)
    for name, path in (("dashboard", "dashboard/"), ("flags", "flags/"),
                       ("disagreements", "disagreements/"), ("csv", "annotators.csv")):
        pages[name] = _median_ms(browser, f"/projects/{project.pk}/{path}")
        print(f"{name}: median {pages[name]:.1f} ms")
        if args.profile:
            with CaptureQueriesContext(connection) as queries:
                browser.get(f"/projects/{project.pk}/{path}")
            for query in sorted(queries, key=lambda q: -float(q["time"]))[:6]:
                print(f"  {float(query['time']) * 1000:7.1f} ms  {query['sql'][:160]}")
    print(f"tasks={args.tasks} annotations={total} recompute_s={recompute_s:.2f} "
          f"recompute_again_s={again_s:.2f} figures_s={figures_s:.2f} api_ms={api_ms:.1f} "
          + " ".join(f"{name}_ms={ms:.1f}" for name, ms in pages.items()))
    return 0


def _median_ms(client, url: str, n: int = 10) -> float:
    """Return the median server time of GET url over n requests, after one warm-up."""
    assert client.get(url).status_code == 200, url
    timings = []
    for _ in range(n):
        t = time.perf_counter()
        client.get(url)
        timings.append((time.perf_counter() - t) * 1000)
    return sorted(timings)[n // 2]


if __name__ == "__main__":
    raise SystemExit(main())
