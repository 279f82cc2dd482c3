"""Full recompute of stored agreement, and the agreement API, on a large project.

Builds a project with N rank tasks (K=4) each ranked by A annotators directly in a
fresh PostgreSQL database (`laoshi_bench_agreement`, dropped at the end), then times
`agreement_refresh(full=True)` (what `manage.py recompute_agreement` runs) and
`GET /api/v1/projects/{id}/agreement/` in-process.

    .venv/bin/python -m bench.agreement_bench [--tasks 100000] [--annotators 3] [--profile]

Ends with one line: tasks=<n> annotations=<m> recompute_s=<s> api_ms=<ms>
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
                        help="print the recompute's top functions by cumulative time")
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
    from django.test import Client
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from labeling.models import (
        Annotation,
        Assignment,
        Completion,
        Prompt,
        Task,
        TaskCompletion,
    )
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
    started = time.perf_counter()
    batch = 5000
    for start in range(0, args.tasks, batch):
        n = min(batch, args.tasks - start)
        prompts = Prompt.objects.bulk_create([
            Prompt(project=project, text=f"prompt {start + i}", split="train",
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
                    {"completion": c, "rank": order.index(c) + 1, "rating": 4, "flags": []}
                    for c in ids]))
        Assignment.objects.bulk_create(assignments)
        Annotation.objects.bulk_create([
            Annotation(assignment=a, task=a.task, annotator=person, project=project,
                       kind="rank", ranking=ranking) for a, person, ranking in annotations])
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
    print(f"tasks={args.tasks} annotations={total} recompute_s={recompute_s:.2f} "
          f"api_ms={api_ms:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
