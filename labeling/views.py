"""Pages for annotators and leads (server-rendered, htmx for the task panel)."""

import csv
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _lazy
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from labeling import selectors
from labeling.agreement import INSTRUCTGPT_AGREEMENT
from labeling.charts import bar_chart
from labeling.flags import FLAGS, RATING_MAX, RATING_MIN
from labeling.forms import (
    CATEGORY_CHOICES,
    STYLE_CHOICES,
    GoldForm,
    ImportForm,
    MemberForm,
    ProjectForm,
    WritePromptTasksForm,
)
from labeling.models import (
    Annotation,
    Membership,
    ProjectAgreement,
    PromptImport,
    ReviewStatus,
    Role,
    Task,
    TaskCompletion,
)
from labeling.services import assignment as assignment_services
from labeling.services import importing
from labeling.services import project as project_services
from labeling.services import review as review_services
from labeling.services.figures import project_figures
from labeling.services.submission import SubmissionConflict, annotation_submit


def _validation_messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [m for errors in exc.error_dict.values() for e in errors for m in e.messages]
    return list(exc.messages)


@login_required
def project_list(request):
    projects = selectors.project_list_for_user(user=request.user)
    roles = selectors.roles_of(user=request.user)
    labels = dict(Role.choices)
    rows = [(project, labels[roles.get(project.pk, Role.LEAD)]) for project in projects]
    can_create = selectors.user_can_create_projects(user=request.user)
    return render(request, "labeling/project_list.html", {"rows": rows, "can_create": can_create})


@login_required
def project_create(request):
    if not selectors.user_can_create_projects(user=request.user):
        raise PermissionDenied
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        fields = {k: v for k, v in form.cleaned_data.items() if k != "name"}
        try:
            project = project_services.project_create(
                creator=request.user, name=form.cleaned_data["name"], **fields
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            return redirect(project)
    return render(request, "labeling/project_form.html", {"form": form, "project": None})


@login_required
def project_detail(request, project_id):
    membership = selectors.membership_get(user=request.user, project_id=project_id)
    project = membership.project
    is_lead = membership.role == Role.LEAD
    context = {
        "project": project,
        "membership": membership,
        "is_lead": is_lead,
        "done": selectors.annotator_counts(project=project, user=request.user),
        "kinds": Task.Kind.choices,
    }
    if membership.role in selectors.DATA_ROLES:
        context["progress"] = selectors.project_progress(project=project)
    if is_lead:
        context["write_prompt_form"] = WritePromptTasksForm()
    return render(request, "labeling/project_detail.html", context)


@login_required
def project_settings(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    project = membership.project
    form = ProjectForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        try:
            project_services.project_update(project=project, **form.cleaned_data)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, _("Settings saved."))
            return redirect(project)
    return render(request, "labeling/project_form.html", {"form": form, "project": project})


@login_required
def project_members(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    project = membership.project
    form = MemberForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            member, created = project_services.membership_add(
                project=project, **form.cleaned_data
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            if created:
                messages.success(request, _("Account %(name)s created and added.")
                                 % {"name": member.user.username})
            else:
                messages.success(request, _("%(name)s added.") % {"name": member.user.username})
            return redirect("labeling:project_members", project_id=project.pk)
    members = project.memberships.select_related("user").order_by("role", "user__username")
    return render(
        request, "labeling/members.html", {"project": project, "form": form, "members": members}
    )


@login_required
def project_import(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    project = membership.project
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        importing.prompt_import_start(
            project=project,
            uploaded_file=form.cleaned_data["file"],
            user=request.user,
            skip_bad_lines=form.cleaned_data["skip_bad_lines"],
            create_demonstrate_tasks=form.cleaned_data["create_demonstrate_tasks"],
        )
        messages.info(request, _("File received; a worker is importing it."))
        return redirect("labeling:project_import", project_id=project.pk)
    imports = project.imports.all()[:20]
    return render(
        request, "labeling/import.html", {"project": project, "form": form, "imports": imports}
    )


@login_required
def import_status(request, project_id, import_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    prompt_import = get_object_or_404(PromptImport, pk=import_id, project=membership.project)
    return render(request, "labeling/_import_row.html", {"imp": prompt_import,
                                                         "project": membership.project})


@login_required
@require_POST
def write_prompt_tasks(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    form = WritePromptTasksForm(request.POST)
    if form.is_valid():
        count = project_services.write_prompt_tasks_create(
            project=membership.project, count=form.cleaned_data["count"]
        )
        messages.success(
            request,
            ngettext(
                "%(count)d prompt-writing task added.",
                "%(count)d prompt-writing tasks added.",
                count,
            ) % {"count": count},
        )
    return redirect(membership.project)


@login_required
def task_gold(request, task_id):
    task = get_object_or_404(Task.objects.select_related("prompt", "project"), pk=task_id)
    selectors.membership_get(
        user=request.user, project_id=task.project_id, roles=selectors.LEAD_ROLES
    )
    links = list(
        TaskCompletion.objects.filter(task=task).select_related("completion").order_by("position")
    )
    form = GoldForm(request.POST or None, completion_ids=[link.completion_id for link in links])
    if request.method == "POST" and form.is_valid():
        try:
            project_services.task_set_gold(task=task, ranking=form.ranking())
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, _("Task marked as gold."))
            return redirect(task.project)
    rows = [(link.completion, form[f"rank_{link.completion_id}"]) for link in links]
    return render(request, "labeling/task_gold.html", {"task": task, "form": form, "rows": rows,
                                                       "project": task.project})


# --- the work page -----------------------------------------------------------------


def _task_context(request, membership, assignment, *, kind, errors=None, posted=None):
    project = membership.project
    context = {
        "project": project,
        "assignment": assignment,
        "kind": kind,
        "errors": errors or [],
        "posted": posted,
        "done": selectors.annotator_counts(project=project, user=request.user),
        "idempotency_key": uuid.uuid4().hex,
    }
    if assignment is None:
        return context
    task = assignment.task
    if task.kind == Task.Kind.RANK:
        responses = []
        for index, shown in enumerate(selectors.shown_completions(assignment)):
            cid = shown["id"]
            responses.append(
                {
                    **shown,
                    "label": chr(ord("A") + index),
                    "rank": (posted or {}).get(f"rank_{cid}", ""),
                    "rating": (posted or {}).get(f"rating_{cid}", ""),
                    "flags": set(posted.getlist(f"flags_{cid}")) if posted else set(),
                }
            )
        context["responses"] = responses
        context["ranks"] = range(1, len(responses) + 1)
        context["ratings"] = range(RATING_MIN, RATING_MAX + 1)
        context["flags"] = [(key, FLAGS[key]) for key in project.flags if key in FLAGS]
        context["task_config"] = {
            "k": len(responses),
            "allowTies": project.allow_ties,
            "assignment": assignment.pk,
        }
    else:
        context["task_config"] = {"assignment": assignment.pk}
    if task.kind == Task.Kind.WRITE_PROMPT:
        context["categories"] = CATEGORY_CHOICES
        context["styles"] = STYLE_CHOICES
    return context


def _render_task(request, membership, assignment, *, kind, errors=None, posted=None,
                 refusal=None):
    context = _task_context(request, membership, assignment, kind=kind, errors=errors,
                            posted=posted)
    context["refusal"] = refusal
    template = "labeling/_task.html" if request.htmx else "labeling/work.html"
    return render(request, template, context)


def _kind_param(request):
    kind = request.GET.get("kind") or request.POST.get("kind") or None
    return kind if kind in Task.Kind.values else None


@login_required
def work(request, project_id):
    membership = selectors.membership_get(user=request.user, project_id=project_id)
    return _claim_and_render(request, membership, _kind_param(request))


def _claim_and_render(request, membership, kind):
    refusal = assignment_services.work_refusal(membership=membership)
    assignment = None
    if refusal is None:
        assignment = assignment_services.assignment_claim_next(
            project=membership.project, annotator=request.user, kind=kind
        )
    return _render_task(request, membership, assignment, kind=kind, refusal=refusal)


def _own_assignment(request, assignment_id):
    """Return the caller's assignment (404 if not theirs) and their membership."""
    assignment = selectors.assignment_get_for_annotator(
        user=request.user, assignment_id=assignment_id
    )
    membership = selectors.membership_get(user=request.user, project_id=assignment.project_id)
    return assignment, membership


def _ranking_from_form(post, display_order) -> list[dict]:
    entries = []
    for cid in display_order:
        rank, rating = post.get(f"rank_{cid}", ""), post.get(f"rating_{cid}", "")
        entries.append(
            {
                "completion": cid,
                "rank": int(rank) if rank.isdigit() else None,
                "rating": int(rating) if rating.isdigit() else None,
                "flags": post.getlist(f"flags_{cid}"),
            }
        )
    return entries


@login_required
@require_POST
def submit(request, assignment_id):
    assignment, membership = _own_assignment(request, assignment_id)
    kind = _kind_param(request)
    task = assignment.task
    post = request.POST
    if task.kind == Task.Kind.RANK:
        data = {
            "ranking": _ranking_from_form(post, assignment.display_order),
            "comment": post.get("comment", ""),
            "text": post.get("text", ""),
        }
    elif task.kind == Task.Kind.DEMONSTRATE:
        data = {"text": post.get("text", ""), "comment": post.get("comment", "")}
    else:
        data = {
            "text": post.get("text", ""),
            "category": post.get("category", ""),
            "style": post.get("style", ""),
            "examples": [
                {"query": q, "response": r}
                for q, r in zip(post.getlist("example_query"), post.getlist("example_response"),
                                strict=False)
                if q.strip() or r.strip()
            ],
        }
    spent = post.get("time_spent_ms", "")
    try:
        annotation_submit(
            assignment=assignment,
            data=data,
            idempotency_key=post.get("idempotency_key", ""),
            time_spent_ms=int(spent) if spent.isdigit() else None,
        )
    except ValidationError as exc:
        return _render_task(request, membership, assignment, kind=kind,
                            errors=_validation_messages(exc), posted=post)
    except SubmissionConflict as exc:
        messages.warning(request, str(exc))
    return _next(request, membership, kind)


def _next(request, membership, kind):
    if not request.htmx:
        url = reverse("labeling:work", args=[membership.project_id])
        return redirect(f"{url}?kind={kind}" if kind else url)
    return _claim_and_render(request, membership, kind)


@login_required
@require_POST
def skip(request, assignment_id):
    assignment, membership = _own_assignment(request, assignment_id)
    try:
        assignment_services.assignment_skip(
            assignment=assignment, reason=request.POST.get("reason", "")
        )
    except assignment_services.AssignmentStateError as exc:
        messages.warning(request, str(exc))
    return _next(request, membership, _kind_param(request))


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


@login_required
def demonstration_review_list(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    status = request.GET.get("status", ReviewStatus.PENDING)
    if status not in ReviewStatus.values:
        status = ReviewStatus.PENDING
    rows = selectors.demonstrations_for_review(project=membership.project, status=status)[:50]
    return render(request, "labeling/review.html", {
        "project": membership.project, "rows": rows, "status": status,
        "statuses": ReviewStatus.choices,
    })


@login_required
@require_POST
def demonstration_review(request, annotation_id):
    annotation = get_object_or_404(
        Annotation.objects.select_related("annotator", "demonstration", "task__prompt"),
        pk=annotation_id,
    )
    membership = selectors.membership_get(
        user=request.user, project_id=annotation.project_id, roles=selectors.LEAD_ROLES
    )
    error = None
    try:
        annotation = review_services.demonstration_review(
            annotation=annotation,
            reviewer=request.user,
            accepted=request.POST.get("verdict") == "accept",
            comment=request.POST.get("comment", ""),
        )
    except ValidationError as exc:
        error = " ".join(_validation_messages(exc))
    if not request.htmx:
        if error:
            messages.warning(request, error)
        return redirect("labeling:demonstration_review_list", project_id=membership.project_id)
    annotation = selectors.demonstrations_for_review(project=membership.project).get(
        pk=annotation.pk
    )
    return render(request, "labeling/_review_row.html",
                  {"row": annotation, "project": membership.project, "error": error})


@login_required
def demonstration_feedback(request, project_id):
    membership = selectors.membership_get(user=request.user, project_id=project_id)
    rows = selectors.demonstration_feedback(project=membership.project, user=request.user)[:100]
    return render(request, "labeling/feedback.html", {"project": membership.project,
                                                      "rows": rows})


@login_required
def dashboard(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.DATA_ROLES
    )
    project = membership.project
    figures = project_figures(project=project)
    stats = figures.stats
    for row in stats["progress"]:
        row["label"] = Task.Kind(row["kind"]).label
    throughput = [(row["day"][5:], row["annotations"]) for row in stats["throughput"]]
    agreement = ProjectAgreement.objects.filter(project=project).first()
    trend = [(row["week"], round(row["agreement"], 3)) for row in
             (agreement.trend if agreement else []) if row["agreement"] is not None]
    taus = [(f"{row['low']:+.1f}…{row['high']:+.1f}", row["tasks"])
            for row in (agreement.tau_histogram if agreement else [])]
    sort = request.GET.get("sort", "username")
    return render(request, "labeling/dashboard.html", {
        "project": project,
        "is_lead": membership.role == Role.LEAD,
        "stats": stats,
        "chart": bar_chart(throughput),
        "agreement": agreement,
        "trend_chart": bar_chart(trend, top=1, reference=INSTRUCTGPT_AGREEMENT),
        "tau_chart": bar_chart(taus),
        "sort": sort,
        "columns": _SORTABLE,
        "figures": figures,
        "annotators": selectors.annotator_table(project=project, sort=sort,
                                                numbers=figures.annotators),
    })


# (column, heading) of the annotator table, in order; every one sorts.
_SORTABLE = [
    ("username", _lazy("Annotator")), ("tasks", _lazy("Tasks")),
    ("median_seconds", _lazy("Median seconds")), ("agreement", _lazy("Agreement with others")),
    ("consensus_agreement", _lazy("Agreement with consensus")),
    ("gold_accuracy", _lazy("Gold accuracy")), ("skip_rate", _lazy("Skip rate")),
    ("position_bias", _lazy("Position bias")), ("flagged_share", _lazy("Flagged share")),
]


@login_required
def flag_report(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.DATA_ROLES
    )
    figures = project_figures(project=membership.project)
    report = selectors.flag_labels(figures.flags)
    points = [(str(label), rate["percent"] or 0)
              for (_, label), rate in zip(report["flags"], report["total"]["rates"],
                                          strict=True)]
    return render(request, "labeling/flags.html", {
        "project": membership.project,
        "figures": figures,
        "report": report,
        "chart": bar_chart(points),
    })


@login_required
def annotators_csv(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.DATA_ROLES
    )
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="annotators-project-{membership.project_id}.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(selectors.ANNOTATOR_COLUMNS)
    numbers = project_figures(project=membership.project).annotators
    for row in selectors.annotator_table(project=membership.project, numbers=numbers):
        writer.writerow(["" if row[c] is None else row[c] for c in selectors.ANNOTATOR_COLUMNS])
    return response


@login_required
@require_POST
def member_active(request, project_id, username):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.LEAD_ROLES
    )
    member = get_object_or_404(Membership, project=membership.project, user__username=username)
    if "daily_quota" in request.POST:
        quota = request.POST["daily_quota"].strip()
        try:
            project_services.membership_set_quota(
                membership=member, daily_quota=int(quota) if quota else None
            )
        except (ValueError, ValidationError):
            messages.warning(request, _("A daily quota is a whole number from 1, or empty."))
    else:
        project_services.membership_set_active(
            membership=member, active=request.POST.get("active") == "1",
            reason=_("Your work in this project is paused by a lead."),
        )
    return redirect("labeling:dashboard", project_id=membership.project_id)


@login_required
def disagreement_explorer(request, project_id):
    membership = selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.DATA_ROLES
    )
    return render(request, "labeling/disagreements.html", {
        "project": membership.project,
        "rows": selectors.disagreements(project=membership.project),
    })
