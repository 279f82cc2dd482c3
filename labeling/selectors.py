"""Read-side queries with membership scoping baked in: a caller cannot forget the check."""

from datetime import timedelta
from statistics import median

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import Avg, Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from labeling import agreement as metrics
from labeling.flags import FLAGS
from labeling.models import (
    Annotation,
    Assignment,
    Category,
    Membership,
    Project,
    Prompt,
    ReviewStatus,
    Role,
    Task,
    TaskAgreement,
    TaskCompletion,
)
from labeling.services.metrics import annotator_agreements

LEAD_ROLES = (Role.LEAD,)
DATA_ROLES = (Role.LEAD, Role.ENGINEER)


def membership_get(*, user, project_id, roles=None) -> Membership:
    """Return the caller's membership in a project (with the project loaded).

    Raise Http404 for a user outside the project and PermissionDenied for a member
    whose role is not in ``roles``. Staff act as leads everywhere.
    """
    if not user.is_authenticated:
        raise Http404
    try:
        project_id = int(project_id)
    except (TypeError, ValueError):
        raise Http404 from None
    membership = _membership_with_project(user, project_id)
    if membership is None:
        if not user.is_staff:
            raise Http404
        project = Project.objects.filter(pk=project_id).first()
        if project is None:
            raise Http404
        membership = Membership(user=user, project=project, role=Role.LEAD)
    if roles is not None and membership.role not in roles:
        raise PermissionDenied
    return membership


_MEMBERSHIP_SQL = (
    "SELECT p.*, m.id AS m_id, m.role AS m_role, m.is_active AS m_is_active,"
    " m.paused_reason AS m_paused_reason, m.daily_quota AS m_daily_quota"
    " FROM labeling_membership m"
    " JOIN labeling_project p ON p.id = m.project_id WHERE m.user_id = %s AND m.project_id = %s"
)


def _membership_with_project(user, project_id) -> Membership | None:
    # Every project page and API call starts here: one fixed statement, not a
    # select_related query built per request.
    project = next(iter(Project.objects.raw(_MEMBERSHIP_SQL, [user.pk, project_id])), None)
    if project is None:
        return None
    return Membership(
        id=project.m_id, user=user, project=project, role=project.m_role,
        is_active=bool(project.m_is_active), paused_reason=project.m_paused_reason,
        daily_quota=project.m_daily_quota,
    )


def project_list_for_user(*, user) -> QuerySet[Project]:
    """Return the projects the user belongs to (all of them for staff)."""
    projects = Project.objects.all()
    if not user.is_staff:
        projects = projects.filter(memberships__user=user)
    return projects.order_by("-id")


def user_can_create_projects(*, user) -> bool:
    """Return whether the user may create projects: staff and leads of any project."""
    return user.is_staff or Membership.objects.filter(user=user, role=Role.LEAD).exists()


def project_progress(*, project) -> dict:
    """Return task counts per kind: total, complete, open, and the annotations done."""
    rows = (
        Task.objects.filter(project=project, is_gold=False)
        .values("kind")
        .annotate(
            total=Count("id"),
            complete=Count("id", filter=Q(status=Task.Status.COMPLETE)),
        )
    )
    labels = dict(Task.Kind.choices)
    progress = {
        row["kind"]: {**row, "label": labels[row["kind"]], "open": row["total"] - row["complete"]}
        for row in rows
    }
    return progress


def annotator_counts(*, project, user) -> dict:
    """Return the number of tasks the annotator has submitted in the project, per kind."""
    rows = (
        Annotation.objects.filter(project=project, annotator=user)
        .values("kind")
        .annotate(n=Count("id"))
    )
    return {row["kind"]: row["n"] for row in rows}


def assignment_get_for_annotator(*, user, assignment_id) -> Assignment:
    """Return the caller's own assignment with its task, project and prompt, or 404."""
    assignment = (
        Assignment.objects.select_related("task", "task__prompt", "project")
        .filter(pk=assignment_id, annotator=user)
        .first()
    )
    if assignment is None:
        raise Http404
    assignment.annotator = user
    return assignment


def roles_of(*, user) -> dict[int, str]:
    """Return {project id: role} for every project the user belongs to."""
    return dict(Membership.objects.filter(user=user).values_list("project_id", "role"))


def shown_completions(assignment) -> list[dict]:
    """Return the assignment's completions as {"id", "text"} in the annotator's order."""
    texts = completion_texts(assignment) if assignment.display_order else {}
    return [{"id": cid, "text": texts[cid]} for cid in assignment.display_order]


def completion_texts(assignment) -> dict[int, str]:
    """Return {completion id: text} for an assignment's task (cached by a fresh claim)."""
    texts = getattr(assignment, "completion_texts", None)
    if texts is None:
        texts = dict(
            TaskCompletion.objects.filter(task_id=assignment.task_id).values_list(
                "completion_id", "completion__text"
            )
        )
        assignment.completion_texts = texts
    return texts


def annotations_for_project(*, project, kind=None, since=None, until=None) -> QuerySet:
    """Return a project's annotations, newest first, ready for listing."""
    annotations = (
        Annotation.objects.filter(project=project)
        .select_related("annotator", "assignment")
        .order_by("-id")
    )
    if kind:
        annotations = annotations.filter(kind=kind)
    if since:
        annotations = annotations.filter(created_at__gte=since)
    if until:
        annotations = annotations.filter(created_at__lt=until)
    return annotations


def demonstrations_for_review(*, project, status=None) -> QuerySet[Annotation]:
    """Return a project's annotations that carry a demonstration, oldest first."""
    rows = (
        Annotation.objects.filter(project=project, demonstration__isnull=False)
        .select_related("annotator", "demonstration", "task__prompt", "reviewed_by")
        .order_by("id")
    )
    if status:
        rows = rows.filter(review_status=status)
    return rows


def demonstration_feedback(*, project, user) -> QuerySet[Annotation]:
    """Return the user's reviewed demonstrations in a project, newest review first."""
    return (
        Annotation.objects.filter(project=project, annotator=user, demonstration__isnull=False)
        .exclude(review_status=ReviewStatus.PENDING)
        .select_related("demonstration", "task__prompt")
        .order_by("-reviewed_at")
    )


def demonstrations_for_training(*, project) -> QuerySet[Annotation]:
    """Return the demonstrations a training dataset may use: every one not rejected."""
    return demonstrations_for_review(project=project).exclude(
        review_status=ReviewStatus.REJECTED
    )


def project_stats(*, project, days: int = 30) -> dict:
    """Return progress per task kind and split, throughput per day, activity and pace."""
    now = timezone.now()
    tasks = Task.objects.filter(project=project, is_gold=False)
    progress = []
    rows = (
        tasks.values("kind", "prompt__split")
        .annotate(
            total=Count("id"),
            done=Count("id", filter=Q(status=Task.Status.COMPLETE)),
            in_progress=Count(
                "id", filter=Q(status=Task.Status.OPEN) & (Q(assigned_count__gt=0)
                                                           | Q(submitted_count__gt=0))
            ),
        )
        .order_by("kind", "prompt__split")
    )
    for row in rows:
        progress.append({
            "kind": row["kind"],
            "split": row["prompt__split"] or "", "total": row["total"],
            "done": row["done"], "in_progress": row["in_progress"],
            "remaining": row["total"] - row["done"] - row["in_progress"],
        })
    since = (now - timedelta(days=days - 1)).date()
    per_day = dict(
        Annotation.objects.filter(project=project, created_at__date__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    throughput = [
        {"day": (since + timedelta(days=i)).isoformat(),
         "annotations": per_day.get(since + timedelta(days=i), 0)}
        for i in range(days)
    ]
    recent = Annotation.objects.filter(project=project, created_at__gte=now - timedelta(days=7))
    last_week = recent.count()
    queue_depth = (
        tasks.filter(status=Task.Status.OPEN)
        .aggregate(n=Sum(F("required_annotations") - F("submitted_count")))["n"]
        or 0
    )
    per_day_rate = last_week / 7
    return {
        "progress": progress,
        "throughput": throughput,
        "active_annotators_7d": recent.values("annotator").distinct().count(),
        "active_annotators_24h": Annotation.objects.filter(
            project=project, created_at__gte=now - timedelta(days=1)
        ).values("annotator").distinct().count(),
        "queue_depth": queue_depth,
        "annotations_per_day_7d": round(per_day_rate, 1),
        "days_to_finish": round(queue_depth / per_day_rate, 1) if per_day_rate else None,
    }


def _median_seconds(project) -> dict[int, float]:
    """Return {annotator id: median seconds per annotation} for a project."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT annotator_id, percentile_cont(0.5) WITHIN GROUP "
                f"(ORDER BY time_spent_ms) FROM {Annotation._meta.db_table} "
                f"WHERE project_id = %s AND time_spent_ms IS NOT NULL GROUP BY annotator_id",
                [project.pk],
            )
            return {uid: value / 1000 for uid, value in cursor.fetchall()}
    times: dict[int, list[int]] = {}
    for annotator_id, spent in Annotation.objects.filter(
        project=project, time_spent_ms__isnull=False
    ).values_list("annotator_id", "time_spent_ms"):
        times.setdefault(annotator_id, []).append(spent)
    return {uid: median(spent) / 1000 for uid, spent in times.items()}


def _rounded(value, digits=3):
    return None if value is None else round(value, digits)


# Columns of the annotator table a lead can sort by (the CSV has the same).
ANNOTATOR_COLUMNS = ["username", "active", "tasks", "median_seconds", "agreement",
                     "consensus_agreement", "gold_accuracy", "skip_rate", "position_bias",
                     "flagged_share"]


def annotator_numbers(*, project) -> dict[int, dict]:
    """Return {annotator id: work done, time, agreement, gold, skips, bias, flags}.

    Every figure here scans the project's annotations; the dashboard reads them as
    stored by ``services.figures.figures_refresh``.
    """
    counts = {
        row["annotator_id"]: row
        for row in Annotation.objects.filter(project=project).values("annotator_id").annotate(
            tasks=Count("id"), gold=Avg("gold_score"), position=Avg("position_rho"),
            flagged=Sum("flagged_responses"), responses=Sum("responses"),
        )
    }
    medians = _median_seconds(project)
    finished: dict[int, dict] = {}
    for row in Assignment.objects.filter(
        project=project, state__in=[Assignment.State.SUBMITTED, Assignment.State.SKIPPED],
    ).values("annotator_id", "state").annotate(n=Count("id")):
        finished.setdefault(row["annotator_id"], {})[row["state"]] = row["n"]
    agreement = {row["annotator_id"]: row for row in annotator_agreements(project=project)}
    numbers = {}
    for uid in set(counts) | set(finished) | set(agreement):
        row = counts.get(uid, {})
        done = finished.get(uid, {})
        submitted = done.get(Assignment.State.SUBMITTED, 0)
        skipped = done.get(Assignment.State.SKIPPED, 0)
        agree = agreement.get(uid) or {}
        numbers[uid] = {
            "tasks": row.get("tasks", 0),
            "median_seconds": _rounded(medians.get(uid), 1),
            "agreement": _rounded(agree.get("agreement")),
            "consensus_agreement": _rounded(agree.get("consensus_agreement")),
            "gold_accuracy": _rounded(row.get("gold")),
            "skip_rate": round(skipped / (submitted + skipped), 3) if submitted + skipped else None,
            "position_bias": _rounded(row.get("position")),
            "flagged_share": (round(row["flagged"] / row["responses"], 3)
                              if row.get("responses") else None),
        }
    return numbers


_NO_NUMBERS = {"tasks": 0} | {c: None for c in ("median_seconds", "agreement",
                                               "consensus_agreement", "gold_accuracy",
                                               "skip_rate", "position_bias", "flagged_share")}


def annotator_table(*, project, sort: str = "username", numbers: dict | None = None
                    ) -> list[dict]:
    """Return one row per annotator member: their numbers, state and quota.

    ``numbers`` as ``annotator_numbers`` returns them (keys may be strings, as stored
    in JSON); computed now when not given. ``sort`` is a column of
    ``ANNOTATOR_COLUMNS``, "-" first for descending; empty values sort last either way.
    """
    if numbers is None:
        numbers = annotator_numbers(project=project)
    numbers = {int(uid): row for uid, row in numbers.items()}
    members = (
        Membership.objects.filter(project=project, role=Role.ANNOTATOR)
        .select_related("user").order_by("user__username")
    )
    table = [
        {
            "membership": member,
            "username": member.user.username,
            "active": member.is_active,
            "paused_reason": member.paused_reason,
            "daily_quota": member.daily_quota,
        } | numbers.get(member.user_id, _NO_NUMBERS)
        for member in members
    ]
    key = sort.lstrip("-")
    if key in ANNOTATOR_COLUMNS and key != "username":
        present = [r for r in table if r[key] is not None]
        present.sort(key=lambda r: r[key], reverse=sort.startswith("-"))
        table = present + [r for r in table if r[key] is None]
    elif sort == "-username":
        table.reverse()
    return table


def disagreements(*, project, limit: int = 20) -> list[dict]:
    """Return the multiply-ranked tasks with the lowest stored agreement, lowest first.

    Each row holds the prompt, the responses in stored order, every annotator's ranks and
    the ranked-pairs consensus, so a lead can compare them side by side.
    """
    worst = list(
        TaskAgreement.objects.filter(project=project, pair_count__gt=0)
        .annotate(score=F("pair_sum") / F("pair_count"))
        .order_by("score", "task_id")
        .values_list("task_id", "score", "consensus")[:limit]
    )
    if not worst:
        return []
    ids = [task_id for task_id, _, _ in worst]
    tasks = Task.objects.in_bulk(ids)
    prompts = {t.pk: t.prompt_id for t in tasks.values()}
    prompt_rows = Prompt.objects.in_bulk(list(prompts.values()))
    responses: dict[int, list] = {}
    for task_id, cid, text in TaskCompletion.objects.filter(task_id__in=ids).order_by(
        "task_id", "position"
    ).values_list("task_id", "completion_id", "completion__text"):
        responses.setdefault(task_id, []).append((cid, text))
    rankings: dict[int, dict] = {}
    for task_id, username, ranking in Annotation.objects.filter(
        task_id__in=ids, kind=Task.Kind.RANK
    ).order_by("annotator__username").values_list("task_id", "annotator__username", "ranking"):
        rankings.setdefault(task_id, {})[username] = metrics.ranks_of(ranking or [])
    rows = []
    for task_id, score, stored in worst:
        by_annotator = rankings.get(task_id, {})
        consensus = {int(cid): rank for cid, rank in (stored or {}).items()}
        rows.append({
            "task": task_id,
            "agreement": round(score, 3),
            "prompt": prompt_rows[prompts[task_id]].display_text,
            "annotators": list(by_annotator),
            "responses": [
                {"text": text, "consensus": consensus.get(cid),
                 "ranks": [by_annotator[name].get(cid) for name in by_annotator]}
                for cid, text in responses.get(task_id, [])
            ],
        })
    return rows


_FLAG_COUNTS_SQL = {
    # One row per (category, flag raised on a response); JSON expanded in the database.
    "postgresql": """
        SELECT p.category, f.flag, COUNT(*)
        FROM {annotation} a
        JOIN {task} t ON t.id = a.task_id
        JOIN {prompt} p ON p.id = t.prompt_id
        CROSS JOIN LATERAL jsonb_array_elements(a.ranking) e
        CROSS JOIN LATERAL jsonb_array_elements_text(e -> 'flags') f(flag)
        WHERE a.project_id = %s AND a.kind = %s AND a.flagged_responses > 0
        GROUP BY p.category, f.flag""",
    "sqlite": """
        SELECT p.category, f.value, COUNT(*)
        FROM {annotation} a
        JOIN {task} t ON t.id = a.task_id
        JOIN {prompt} p ON p.id = t.prompt_id,
        json_each(a.ranking) e, json_each(e.value, '$.flags') f
        WHERE a.project_id = %s AND a.kind = %s AND a.flagged_responses > 0
        GROUP BY p.category, f.value""",
}


def flag_rates(*, project) -> dict:
    """Return how often each flag was raised per prompt category, of the responses ranked.

    {"flags": [key], "rows": [{"category", "responses", "rates": [{"flag", "count",
    "share", "percent"}]}], "total": {... the same over all categories}}: plain JSON,
    stored as it is; ``flag_labels`` adds the labels in the reader's language.
    """
    tables = {"annotation": Annotation._meta.db_table, "task": Task._meta.db_table,
              "prompt": Prompt._meta.db_table}
    counts: dict[str, dict[str, int]] = {}
    with connection.cursor() as cursor:
        cursor.execute(_FLAG_COUNTS_SQL[connection.vendor].format(**tables),
                       [project.pk, Task.Kind.RANK])
        for category, flag, n in cursor.fetchall():
            counts.setdefault(category, {})[flag] = n
    responses = dict(
        Annotation.objects.filter(project=project, kind=Task.Kind.RANK)
        .values("task__prompt__category").annotate(n=Sum("responses"))
        .values_list("task__prompt__category", "n")
    )
    asked = list(project.flags or [])
    raised = sorted({f for per in counts.values() for f in per} - set(asked))
    keys = asked + raised  # flags no longer asked still show what was raised

    def rates(per: dict, total: int) -> list[dict]:
        return [{"flag": key, "count": per.get(key, 0),
                 "share": round(per.get(key, 0) / total, 4) if total else None,
                 "percent": round(100 * per.get(key, 0) / total, 1) if total else None}
                for key in keys]

    rows = []
    overall: dict[str, int] = {}
    for category in sorted(set(responses) | set(counts)):
        per = counts.get(category, {})
        for key, n in per.items():
            overall[key] = overall.get(key, 0) + n
        total = responses.get(category) or 0
        rows.append({"category": category, "responses": total, "rates": rates(per, total)})
    total = sum(n or 0 for n in responses.values())
    return {
        "flags": keys,
        "rows": rows,
        "total": {"responses": total, "rates": rates(overall, total)},
    }


def flag_labels(report: dict) -> dict:
    """Return a ``flag_rates`` report with flag and category labels for display."""
    categories = dict(Category.choices)
    return report | {
        "flags": [(key, FLAGS.get(key, key)) for key in report["flags"]],
        "rows": [row | {"label": categories.get(row["category"], row["category"])}
                 for row in report["rows"]],
    }
