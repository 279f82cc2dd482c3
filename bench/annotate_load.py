"""Annotation load: N annotators loop next-task then submit, with no pause, on loopback.

    .venv/bin/python -m bench.annotate_load                       # PostgreSQL, 50 x 30 s
    .venv/bin/python -m bench.annotate_load --database sqlite     # the embedded default

Set-up (not timed): a fresh database (PostgreSQL ``laoshi_bench``, dropped again at the
end, or a SQLite file in a temporary folder), migrations, one project (K=4, overlap 2)
with enough rank tasks that the queue never runs dry, N annotator accounts and their
API tokens. Then gunicorn serves ``config.wsgi`` with ``config.settings.bench`` on
127.0.0.1, the annotators run for ``--seconds``, gunicorn stops, and the database is
checked: no task over its overlap, no annotator twice on one task, and every
submission the client was told about (201/200) is stored. The last line printed is:

    subs_per_s=<x> p99_next_ms=<y> p99_submit_ms=<z> duplicates=<d> lost=<l>

Exit status: 0 when duplicates and lost are zero, 1 when not, 2 when the run failed.
"""

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench.system import system_busy_s

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "config.settings.bench"
BENCH_DB = "laoshi_bench"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
K, OVERLAP = 4, 2
PASSWORD = "bench-annotator-password-7731"
# Measured on 2 cores (bench/README.md): three sync workers served as many submissions
# as any gthread set-up tried, with the shortest tail; threads only add GIL contention.
DEFAULT_WORKER_CLASS, DEFAULT_WORKERS, DEFAULT_THREADS = "sync", 3, 1

# Every loop is bounded in count and in time.
MAX_CYCLES = 100_000  # next + submit rounds per annotator
REQUEST_TIMEOUT_S = 30
SUBMIT_RETRIES = 2  # resent with the same Idempotency-Key after a network error
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
DRAIN_S = 2 * REQUEST_TIMEOUT_S * (1 + SUBMIT_RETRIES)

WORDS = (
    "the answer explains each step and why it follows from the previous one while a "
    "careful reader checks the facts the sources the tone and whether the response "
    "follows the instruction without inventing details or leaving out the key point"
).split()


def log(message: str) -> None:
    print(message, flush=True)


# --- databases -------------------------------------------------------------------------


def postgres_recreate(admin_url: str) -> str:
    """Drop and create the bench database; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{BENCH_DB}"))


def postgres_drop(admin_url: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB))
        )


def migrate(env: dict) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=env, check=True, timeout=600,
    )


# --- set-up through the services ---------------------------------------------------------


def _items(count: int, rng: random.Random):
    for i in range(count):
        yield {
            "prompt": f"Prompt {i}: explain the trade-offs of approach {i} to a new colleague.",
            "category": "open_qa",
            "user_id": f"bench-user-{i}",
            "completions": [
                {
                    "text": f"Response {j} to prompt {i}. " + " ".join(rng.choices(WORDS, k=100)),
                    "model": f"bench-model-{j}",
                }
                for j in range(K)
            ],
        }


def populate(*, annotators: int, tasks: int, rng: random.Random) -> tuple[int, list[str]]:
    """Create the project, its rank tasks and the annotators; return (project id, names)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from labeling.models import Role
    from labeling.services.importing import prompts_import, records_from_items
    from labeling.services.project import membership_add, project_create

    User = get_user_model()
    # One hash shared by every account keeps set-up quick (PBKDF2 takes about half a
    # second); logging in still goes through the real hasher on the server.
    password_hash = make_password(PASSWORD)
    lead = User.objects.create(username="bench-lead", password=password_hash)
    project = project_create(creator=lead, name="Annotation load", k=K, overlap=OVERLAP)
    names = [f"annotator-{i:03d}" for i in range(annotators)]
    User.objects.bulk_create([User(username=name, password=password_hash) for name in names])
    for name in names:
        membership_add(project=project, username=name, role=Role.ANNOTATOR)
    report = prompts_import(project=project, records=records_from_items(_items(tasks, rng)))
    if not report.imported or report.tasks_created != tasks:
        raise RuntimeError(f"the task import failed: {report.as_dict()}")
    return project.pk, names


# --- gunicorn --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_start(*, port: int, env: dict, args, log_path: Path) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).parent / "gunicorn"), "config.wsgi",
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", args.worker_class,
        "--workers", str(args.workers),
        "--threads", str(args.threads),
        "--timeout", "60",
        "--graceful-timeout", "10",
        "--keep-alive", "5",
        "--backlog", "2048",
        "--log-level", "warning",
    ]
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def gunicorn_wait(proc: subprocess.Popen, base: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer /healthz in {START_TIMEOUT_S} s")


def gunicorn_stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # The master started its own session: this group is gunicorn and its workers.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- CPU accounting (Linux /proc; best effort) -----------------------------------------


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def postgres_backends(admin_url: str) -> list[int]:
    """Return the pids of the PostgreSQL backends connected to the bench database."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", [BENCH_DB]
        ).fetchall()
    return [pid for (pid,) in rows]


def cpu_snapshot(server_pid: int, database_pids) -> dict:
    """Return CPU seconds used so far: this client, gunicorn, database backends, machine."""
    return {
        "client": time.process_time(),
        "server": _proc_cpu_s(server_pid) + sum(_proc_cpu_s(c) for c in _children(server_pid)),
        "database": {pid: _proc_cpu_s(pid) for pid in database_pids()},
        "system": system_busy_s(),
    }


def cpu_used(before: dict, after: dict) -> dict:
    used = {key: after[key] - before[key] for key in ("client", "server", "system")}
    # Backends that started during the load count from zero.
    used["database"] = sum(
        cpu - before["database"].get(pid, 0.0) for pid, cpu in after["database"].items()
    )
    used["other"] = max(
        used["system"] - used["client"] - used["server"] - used["database"], 0.0
    )
    return used


# --- the load --------------------------------------------------------------------------


@dataclass
class Stats:
    latency_ms: dict = field(default_factory=lambda: {"next": [], "submit": []})
    statuses: Counter = field(default_factory=Counter)
    acked: dict = field(default_factory=dict)  # annotation id -> assignment id
    created: int = 0
    replayed: int = 0
    retries: int = 0
    empty_queue: int = 0


async def _post(session, url, payload, headers):
    """Return (status or None on a network error, body, milliseconds)."""
    started = time.perf_counter()
    try:
        async with session.post(url, json=payload, headers=headers) as resp:
            if resp.status in (200, 201):
                body = await resp.json()
            else:
                body = await resp.text()
            return resp.status, body, (time.perf_counter() - started) * 1000
    except (TimeoutError, aiohttp.ClientError) as exc:
        return None, type(exc).__name__, (time.perf_counter() - started) * 1000


def _ranking(completions, rng: random.Random) -> list[dict]:
    ranks = list(range(1, len(completions) + 1))
    rng.shuffle(ranks)
    return [
        {"completion": c["id"], "rank": rank, "rating": rng.randint(1, 7), "flags": []}
        for c, rank in zip(completions, ranks, strict=True)
    ]


async def annotator(*, session, base, project_id, token, deadline, stats, rng):
    """Loop next-task then submit until the deadline, the cycle cap or an empty queue."""
    headers = {"Authorization": f"Token {token}"}
    next_url = f"{base}/api/v1/projects/{project_id}/tasks/next/"
    for _cycle in range(MAX_CYCLES):
        if time.monotonic() >= deadline:
            return
        status, body, ms = await _post(session, next_url, {"kind": "rank"}, headers)
        stats.statuses["next", status] += 1
        if status is None:
            await asyncio.sleep(0.1)  # the server is unreachable: do not spin
            continue
        stats.latency_ms["next"].append(ms)
        if status == 204:
            stats.empty_queue += 1
            return
        if status != 200:
            continue
        assignment = body["assignment"]
        url = f"{base}/api/v1/assignments/{assignment}/submit/"
        payload = {"ranking": _ranking(body["completions"], rng), "comment": ""}
        submit_headers = {**headers, "Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(1 + SUBMIT_RETRIES):
            status, result, ms = await _post(session, url, payload, submit_headers)
            stats.statuses["submit", status] += 1
            if status is not None:
                break
            stats.retries += attempt < SUBMIT_RETRIES
            await asyncio.sleep(0.1)
        if status is None:
            continue
        stats.latency_ms["submit"].append(ms)
        if status in (200, 201):
            stats.acked[result["annotation"]] = assignment
            if result.get("replayed"):
                stats.replayed += 1
            else:
                stats.created += 1


async def fetch_tokens(session, base: str, names: list[str]) -> list[str]:
    limit = asyncio.Semaphore(4)

    async def one(name):
        async with limit, session.post(
            f"{base}/api/v1/auth/token/", json={"username": name, "password": PASSWORD}
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"token for {name}: HTTP {resp.status} {await resp.text()}")
            return (await resp.json())["token"]

    return await asyncio.gather(*(one(name) for name in names))


async def run_load(*, base, project_id, names, seconds, server_pid, database_pids, seed):
    """Get the tokens (not timed), then run the annotators; return (stats, elapsed, cpu)."""
    connector = aiohttp.TCPConnector(limit=len(names), limit_per_host=len(names))
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tokens = await fetch_tokens(session, base, names)
        stats = Stats()
        before = cpu_snapshot(server_pid, database_pids)
        started = time.monotonic()
        deadline = started + seconds
        workers = [
            annotator(session=session, base=base, project_id=project_id, token=token,
                      deadline=deadline, stats=stats, rng=random.Random(seed + i))
            for i, token in enumerate(tokens)
        ]
        await asyncio.wait_for(asyncio.gather(*workers), timeout=seconds + DRAIN_S)
        elapsed = time.monotonic() - started
        after = cpu_snapshot(server_pid, database_pids)
    return stats, elapsed, cpu_used(before, after)


# --- checks ----------------------------------------------------------------------------


def verify(project_id: int, acked: dict) -> dict:
    """Count over-annotated tasks and acknowledged submissions missing from the database."""
    from django.db.models import Count, F, Q

    from labeling.models import Annotation, Assignment, Task

    live = [Assignment.State.ACTIVE, Assignment.State.SUBMITTED]
    tasks = Task.objects.filter(project_id=project_id, is_gold=False)  # gold: no overlap cap
    over_assigned = set(
        tasks.annotate(n=Count("assignments", filter=Q(assignments__state__in=live)))
        .filter(n__gt=F("required_annotations"))
        .values_list("id", flat=True)
    )
    over_annotated = set(
        tasks.annotate(n=Count("annotations"))
        .filter(n__gt=F("required_annotations"))
        .values_list("id", flat=True)
    )
    twice = set()
    for model in (Assignment, Annotation):
        twice |= set(
            model.objects.filter(project_id=project_id)
            .values("task_id", "annotator_id")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .values_list("task_id", flat=True)
        )
    stored = dict(
        Annotation.objects.filter(project_id=project_id).values_list("id", "assignment_id")
    )
    lost = sorted(a for a in acked if a not in stored)
    mismatched = sorted(a for a, asg in acked.items() if a in stored and stored[a] != asg)

    # Counters the claim relies on, against the rows they summarize.
    live_rows = dict(
        Assignment.objects.filter(project_id=project_id, state__in=live)
        .values("task_id").annotate(n=Count("id")).values_list("task_id", "n")
    )
    annotation_rows = dict(
        Annotation.objects.filter(project_id=project_id)
        .values("task_id").annotate(n=Count("id")).values_list("task_id", "n")
    )
    drift = 0
    for task_id, assigned, submitted in tasks.values_list(
        "id", "assigned_count", "submitted_count"
    ):
        if assigned != live_rows.get(task_id, 0) or submitted != annotation_rows.get(task_id, 0):
            drift += 1
    return {
        "over_assigned": len(over_assigned),
        "over_annotated": len(over_annotated),
        "same_annotator_twice": len(twice),
        "duplicates": len(over_assigned | over_annotated | twice),
        "lost": len(lost) + len(mismatched),
        "lost_ids": lost[:10],
        "mismatched": len(mismatched),
        "stored": len(stored),
        "unacknowledged": len(set(stored) - set(acked)),
        "tasks_touched": len(annotation_rows),
        "tasks_complete": tasks.filter(status=Task.Status.COMPLETE).count(),
        "counter_drift": drift,
    }


def queries_per_call(project_id: int) -> tuple[int, int]:
    """Count the SQL statements of one next-task and one submit, served in-process."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from labeling.models import Project, Role
    from labeling.services.project import membership_add

    # WhiteNoise warns that STATIC_ROOT is missing: no static file is served here.
    warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)
    user = get_user_model().objects.create(username="bench-probe")
    membership_add(project=Project.objects.get(pk=project_id), username=user.username,
                   role=Role.ANNOTATOR)
    client = APIClient(SERVER_NAME="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    with CaptureQueriesContext(connection) as next_queries:
        resp = client.post(f"/api/v1/projects/{project_id}/tasks/next/", {"kind": "rank"},
                           format="json")
    if resp.status_code != 200:
        raise RuntimeError(f"query probe: next-task answered {resp.status_code}")
    body = resp.json()
    payload = {"ranking": _ranking(body["completions"], random.Random(0)), "comment": ""}
    with CaptureQueriesContext(connection) as submit_queries:
        resp = client.post(f"/api/v1/assignments/{body['assignment']}/submit/", payload,
                           format="json", HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex)
    if resp.status_code != 201:
        raise RuntimeError(f"query probe: submit answered {resp.status_code}")
    return len(next_queries), len(submit_queries)


# --- report ----------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Return the nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def report(*, args, stats, elapsed, cpu, checks, queries, server) -> str:
    log("")
    log(f"database      {args.database}; gunicorn {server}; "
        f"{args.annotators} annotators x {args.seconds} s, {args.tasks} rank tasks (K={K}, "
        f"overlap {OVERLAP}) on {os.cpu_count()} cores")
    log(f"elapsed       {elapsed:.1f} s (load window {args.seconds} s plus in-flight requests)")
    log(f"submissions   {stats.created} new (201), {stats.replayed} replayed (200), "
        f"{stats.retries} resent after a network error")
    statuses = ", ".join(
        f"{call} {status or 'network error'}: {n}"
        for (call, status), n in sorted(stats.statuses.items(), key=lambda kv: str(kv[0]))
    )
    log(f"responses     {statuses}")
    for call in ("next", "submit"):
        values = stats.latency_ms[call]
        log(f"{call:<13} n={len(values)} p50={percentile(values, 50):.1f} ms "
            f"p95={percentile(values, 95):.1f} ms p99={percentile(values, 99):.1f} ms "
            f"max={max(values, default=0):.1f} ms")
    if queries:
        log(f"sql/request   next-task {queries[0]} statements, submit {queries[1]} "
            "(one in-process call each, transaction control not counted)")
    available = elapsed * (os.cpu_count() or 1)
    database = (f"postgres backends {cpu['database']:.1f}, "
                if args.database == "postgres" else "")
    log(f"cpu           of {available:.0f} core-s: client {cpu['client']:.1f}, gunicorn "
        f"{cpu['server']:.1f}, {database}other processes {cpu['other']:.1f} "
        f"(load average before the run: {args.load_before})")
    if stats.created:
        # CPU per submission (one next-task plus one submit) does not depend on what else
        # runs on the machine, so it gives the ceiling on idle cores even on a busy one.
        per_sub = {key: cpu[key] * 1000 / stats.created for key in ("client", "server")}
        per_sub["database"] = cpu["database"] * 1000 / stats.created
        total = sum(per_sub.values())
        log(f"cpu/sub       gunicorn {per_sub['server']:.1f} ms, "
            + (f"postgres {per_sub['database']:.1f} ms, " if database else "")
            + f"client {per_sub['client']:.1f} ms per submission (next-task + submit): "
            f"at most {(os.cpu_count() or 1) * 1000 / total:.0f} subs/s on these cores "
            "if nothing else ran")
    if cpu["other"] > 0.1 * available:
        log("WARNING       other processes used over 10% of the CPU: the figures are low")
    log(f"tasks         {checks['tasks_touched']} annotated, {checks['tasks_complete']} "
        f"complete; {checks['stored']} annotations stored, {checks['unacknowledged']} "
        "never acknowledged (in flight when the client gave up)")
    log(f"checks        over-assigned tasks {checks['over_assigned']}, over-annotated tasks "
        f"{checks['over_annotated']}, tasks with one annotator twice "
        f"{checks['same_annotator_twice']}, acknowledged but missing {checks['lost_ids']}, "
        f"stored on another assignment {checks['mismatched']}, "
        f"task counters off {checks['counter_drift']}")
    if stats.empty_queue:
        log(f"WARNING       the queue ran dry ({stats.empty_queue} annotators got 204): "
            "raise --tasks, the throughput figure is not comparable")
    return (
        f"subs_per_s={stats.created / elapsed:.1f} "
        f"p99_next_ms={percentile(stats.latency_ms['next'], 99):.1f} "
        f"p99_submit_ms={percentile(stats.latency_ms['submit'], 99):.1f} "
        f"duplicates={checks['duplicates']} lost={checks['lost']}"
    )


# --- main ------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--tasks", type=int, default=None,
                        help="rank tasks to create (default: 300 per second of load)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="threads per worker (gthread)")
    parser.add_argument("--worker-class", choices=["gthread", "sync"],
                        default=DEFAULT_WORKER_CLASS)
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL",
                                                                 DEFAULT_POSTGRES),
                        help="a maintenance database to create laoshi_bench from")
    parser.add_argument("--keep-database", action="store_true",
                        help="leave laoshi_bench (or the SQLite file) for inspection")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.annotators <= 500:
        parser.error("--annotators: from 1 to 500")
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds: from 1 to 600")
    if args.worker_class == "sync":
        args.threads = 1
    if args.tasks is None:
        args.tasks = max(1000, int(args.seconds * 300))
    if not 1 <= args.tasks <= 200_000:
        parser.error("--tasks: from 1 to 200,000")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work_dir = Path(tempfile.mkdtemp(prefix="laoshi-bench-"))
    gunicorn_log = work_dir / "gunicorn.log"
    created_postgres = django_ready = False
    database_url = ""
    proc = None
    try:
        if args.database == "postgres":
            database_url = postgres_recreate(args.postgres_url)
            created_postgres = True
        else:
            database_url = f"sqlite:///{work_dir / 'bench.sqlite3'}"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": SETTINGS,
            "DATABASE_URL": database_url,
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
            "LAOSHI_VAR_DIR": str(work_dir / "var"),
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(env)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        log(f"set-up: {args.database} database, migrations, {args.tasks} rank tasks, "
            f"{args.annotators} annotators")
        migrate(env)
        import django

        django.setup()
        django_ready = True
        from django.db import connections

        project_id, names = populate(annotators=args.annotators, tasks=args.tasks, rng=rng)
        connections.close_all()

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = (f"{args.worker_class} --workers {args.workers}"
                  + (f" --threads {args.threads}" if args.worker_class == "gthread" else ""))
        log(f"gunicorn {server} on {base} (log: {gunicorn_log})")
        proc = gunicorn_start(port=port, env=env, args=args, log_path=gunicorn_log)
        gunicorn_wait(proc, base, gunicorn_log)
        log(f"load: {args.annotators} annotators for {args.seconds:g} s")
        args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if args.database == "postgres":
            def database_pids():
                return postgres_backends(args.postgres_url)
        else:
            def database_pids():
                return []
        stats, elapsed, cpu = asyncio.run(run_load(
            base=base, project_id=project_id, names=names, seconds=args.seconds,
            server_pid=proc.pid, database_pids=database_pids, seed=args.seed,
        ))
        gunicorn_stop(proc)
        checks = verify(project_id, stats.acked)
        queries = queries_per_call(project_id)
        summary = report(args=args, stats=stats, elapsed=elapsed, cpu=cpu, checks=checks,
                         queries=queries, server=server)
        expected = {("next", 200), ("next", 204), ("submit", 201), ("submit", 200)}
        if set(stats.statuses) - expected:
            log(f"gunicorn log (last lines):\n{_tail(gunicorn_log, 20)}")
    except Exception as exc:  # report and clean up; the traceback helps more than a summary
        import traceback

        traceback.print_exc()
        log(f"the benchmark failed: {exc}")
        return 2
    finally:
        if proc is not None:
            gunicorn_stop(proc)
        if django_ready:
            from django.db import connections

            connections.close_all()
        if created_postgres and not args.keep_database:
            postgres_drop(args.postgres_url)
        if args.keep_database:
            log(f"kept: {database_url} and {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    log(summary)
    return 1 if checks["duplicates"] or checks["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
