"""Pages for leads and engineers: dataset snapshots and training runs, live as they go.

Every page is for the project's leads and engineers (selectors.DATA_ROLES): an outsider
gets 404, an annotator 403. A snapshot or a run is reached by its own id; the view loads
it first, then checks the caller's membership in its project.
"""


from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from labeling.charts import line_chart
from labeling.flags import FLAGS
from labeling.models import Category, Split
from labeling.pages import data_membership, in_project, page_or_fragment
from training.configs import describe
from training.forms import GROUP_LEGENDS, RunForm, SnapshotForm
from training.models import DatasetSnapshot, TrainingRun
from training.services import runs as run_services
from training.services.runs import SNAPSHOT_KIND, RunError, run_create
from training.services.snapshots import SnapshotError, snapshot_create, snapshot_file

LIST_LENGTH = 50
LOG_TAIL_LINES = 40
# The child's own output (train.log) can be large: only its end is read.
TRAIN_LOG_TAIL_BYTES = 8192
CHART_TABLE_ROWS = 20
RUN_INPUTS = ("job", "snapshot", "sft_snapshot", "parent", "reward_model", "output_model",
              "created_by")
# What the download URL may name: a split's file in a data format, or the dataset card.
CONTENT_TYPES = {"jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet",
                 "md": "text/markdown; charset=utf-8"}


def _snapshot_in_project(request, snapshot_id, queryset=None):
    """Return the snapshot (404 if missing) and the caller's lead or engineer membership."""
    return in_project(request, DatasetSnapshot.objects.all() if queryset is None else queryset,
                       pk=snapshot_id)



@login_required
def snapshot_list(request, project_id):
    membership = data_membership(request, project_id)
    project = membership.project
    form = SnapshotForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            snapshot = snapshot_create(
                project=project, name=data["name"], kind=data["kind"], filters=form.filters(),
                merge=data["merge"], pair_policy=data["pair_policy"], margin=data["margin"],
                parquet=data["parquet"], license=data["license"], created_by=request.user,
            )
        except SnapshotError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Snapshot %(name)s queued.") % {"name": snapshot.name})
            return redirect(snapshot)
    snapshots = list(DatasetSnapshot.objects.filter(project=project)
                     .select_related("job", "created_by")[:LIST_LENGTH])
    return page_or_fragment(request, "training/snapshot_list.html",
                             "training/_snapshot_rows.html", {
                                 "project": project, "form": form, "snapshots": snapshots,
                                 "any_active": any(s.job.is_active for s in snapshots),
                             })


def _filter_words(snapshot) -> dict:
    """Return the snapshot's filter with names in place of keys and ids, for the page."""
    filters = snapshot.filters
    splits, categories = dict(Split.choices), dict(Category.choices)
    excluded = filters.get("exclude_annotators", [])
    names = dict(get_user_model().objects.filter(pk__in=excluded)
                 .values_list("pk", "username")) if excluded else {}
    return {
        "splits": [splits.get(s, s) for s in filters.get("splits", [])],
        "categories": [categories.get(c, c) for c in filters.get("categories", [])],
        "flags": [FLAGS.get(f, f) for f in filters.get("exclude_flags", [])],
        "annotators": [names.get(pk, f"#{pk}") for pk in excluded],
    }


def _category_table(snapshot) -> list[tuple[str, list[int], int]]:
    """Return (category, rows per split in row_counts' order, total) for each category."""
    labels = dict(Category.choices)
    per_split = snapshot.category_counts
    categories = sorted({c for counts in per_split.values() for c in counts})
    table = []
    for category in categories:
        counts = [per_split.get(split, {}).get(category, 0) for split in snapshot.row_counts]
        table.append((labels.get(category, category), counts, sum(counts)))
    return table


@login_required
def snapshot_detail(request, snapshot_id):
    snapshot, membership = _snapshot_in_project(
        request, snapshot_id,
        DatasetSnapshot.objects.select_related("job", "created_by", "previous"),
    )
    job = snapshot.job
    context = {
        "project": membership.project, "snapshot": snapshot, "job": job,
        "log_tail": "\n".join(job.log.splitlines()[-LOG_TAIL_LINES:]),
        "categories": _category_table(snapshot),
        "total_rows": sum(snapshot.row_counts.values()),
    }
    if not request.htmx:
        context["filter_words"] = _filter_words(snapshot)
        context["runs"] = (TrainingRun.objects.filter(Q(snapshot=snapshot) |
                                                      Q(sft_snapshot=snapshot))
                           .select_related("job")[:LIST_LENGTH])
        context["train_kinds"] = [(kind, TrainingRun.Kind(kind).label)
                                  for kind, reads in SNAPSHOT_KIND.items()
                                  if reads == snapshot.kind]
    return page_or_fragment(request, "training/snapshot_detail.html",
                             "training/_snapshot_live.html", context)


@login_required
def snapshot_download(request, snapshot_id, split, fmt):
    snapshot, _membership = _snapshot_in_project(request, snapshot_id)
    if (split == "card") != (fmt == "md"):
        raise Http404
    try:
        path = snapshot_file(snapshot=snapshot, split=split, fmt=fmt)
        handle = path.open("rb")
    except (SnapshotError, FileNotFoundError):
        raise Http404 from None
    name = f"snapshot-{snapshot.pk}-README.md" if split == "card" else \
        f"snapshot-{snapshot.pk}-{split}.{fmt}"
    return FileResponse(handle, as_attachment=True, filename=name,
                        content_type=CONTENT_TYPES[fmt])


# --- training runs -----------------------------------------------------------------

# (element id, title, metric keys, run kinds that log them)
CHARTS = (
    ("loss-chart", gettext_lazy("Loss"), ("loss", "eval_loss"), ("sft", "reward", "ppo")),
    ("accuracy-chart", gettext_lazy("Held-out accuracy: the preferred response scored higher"),
     ("eval_accuracy",), ("reward",)),
    ("reward-chart", gettext_lazy("Mean reward of the policy's responses"),
     ("reward_mean", "eval_reward_mean"), ("ppo",)),
    ("kl-chart", gettext_lazy("KL divergence of the policy from the SFT model"),
     ("kl",), ("ppo",)),
)
METRIC_LABELS = {
    "loss": gettext_lazy("training loss"),
    "eval_loss": gettext_lazy("validation loss"),
    "eval_accuracy": gettext_lazy("held-out accuracy"),
    "reward_mean": gettext_lazy("mean reward"),
    "eval_reward_mean": gettext_lazy("held-out mean reward"),
    "kl": gettext_lazy("KL"),
}


def _run_in_project(request, run_id, queryset=None):
    """Return the run (404 if missing) and the caller's lead or engineer membership."""
    return in_project(request, TrainingRun.objects.select_related("job")
                       if queryset is None else queryset, pk=run_id)


def _steps(run) -> list[dict]:
    """Return the run's logged steps."""
    return run.series()


def _number_text(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _run_chart(steps: list[dict], chart_id: str, title, keys: tuple[str, ...]) -> dict:
    """Return a line chart of the keys over the steps, and its numbers (the last rows)."""
    series = [(METRIC_LABELS.get(key, key), [(entry.get("step"), entry[key])
                                            for entry in steps if key in entry])
              for key in keys]
    rows = [(entry.get("step"), [_number_text(entry.get(key)) for key in keys])
            for entry in steps if any(key in entry for key in keys)]
    return {"id": chart_id, "title": title, "chart": line_chart(series),
            "labels": [label for label, _points in series],
            "rows": rows[-CHART_TABLE_ROWS:], "total_rows": len(rows)}


def _latest_values(steps: list[dict]) -> list[tuple[str, object, str]]:
    """Return (metric, step, last value) for every metric the run logged."""
    latest = {}
    for entry in steps:
        for key, value in entry.items():
            if key != "step":
                latest[key] = (entry.get("step"), _number_text(value))
    return [(key, step, value) for key, (step, value) in latest.items()]


def _setting_text(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _settings_table(run) -> list[tuple[str, list[dict]]]:
    """Return (group legend, settings) with every setting's value, defaults filled in."""
    groups = {group: [] for group in GROUP_LEGENDS}
    for setting in describe(run.kind):
        changed = setting["name"] in run.config
        value = run.config[setting["name"]] if changed else setting["default"]
        groups[setting["group"]].append({
            "name": setting["name"], "value": _setting_text(value), "changed": changed,
            "default": _setting_text(setting["default"]),
        })
    return [(GROUP_LEGENDS[group], rows) for group, rows in groups.items() if rows]


@login_required
def run_list(request, project_id):
    membership = data_membership(request, project_id)
    project = membership.project
    runs = list(TrainingRun.objects.filter(project=project)
                .select_related(*RUN_INPUTS)[:LIST_LENGTH])
    rows = [(run, _number_text(run.latest.get("loss"))) for run in runs]
    return page_or_fragment(request, "training/run_list.html", "training/_run_rows.html", {
        "project": project, "rows": rows, "kinds": TrainingRun.Kind.choices,
        "any_active": any(run.job.is_active for run in runs),
    })


@login_required
def run_new(request, project_id, kind):
    membership = data_membership(request, project_id)
    if kind not in SNAPSHOT_KIND:
        raise Http404
    project = membership.project
    form = RunForm(request.POST or None, project=project, kind=kind,
                   initial={"snapshot": request.GET.get("snapshot")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            # The run's seed is the config's: what provenance records is what trained.
            run = run_create(
                project=project, kind=kind, snapshot=data["snapshot"], parent=data["parent"],
                config=form.config(), seed=data["seed"], created_by=request.user,
                reward_model=data.get("reward_model"), sft_snapshot=data.get("sft_snapshot"),
            )
        except RunError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Training run %(id)s queued.") % {"id": run.pk})
            return redirect(run)
    return render(request, "training/run_new.html", {
        "project": project, "form": form, "kind": kind,
        "kind_label": TrainingRun.Kind(kind).label,
        "snapshot_kind_label": DatasetSnapshot.Kind(SNAPSHOT_KIND[kind]).label,
    })


@login_required
def run_detail(request, run_id):
    run, membership = _run_in_project(request, run_id,
                                      TrainingRun.objects.select_related(*RUN_INPUTS))
    job, steps = run.job, _steps(run)
    context = {
        "project": membership.project, "run": run, "job": job,
        "charts": [_run_chart(steps, chart_id, title, keys)
                   for chart_id, title, keys, kinds in CHARTS if run.kind in kinds],
        "latest_values": _latest_values(steps),
        "log_tail": "\n".join(job.log.splitlines()[-LOG_TAIL_LINES:]),
        "train_log": (run_services.log_tail(run_services.train_log(run), TRAIN_LOG_TAIL_BYTES)
                      if run.output_dir else ""),
        "can_resume": (job.status in (job.Status.FAILED, job.Status.CANCELLED)
                       and run.output_model_id is None),
    }
    if not request.htmx:
        context["settings"] = _settings_table(run)
    return page_or_fragment(request, "training/run_detail.html", "training/_run_live.html",
                             context)


@login_required
@require_POST
def run_cancel(request, run_id):
    run, _membership = _run_in_project(request, run_id)
    run = run_services.run_cancel(run=run)
    if run.job.status == run.job.Status.CANCELLED:
        messages.info(request, _("Run cancelled."))
    elif run.job.is_active:
        messages.info(request, _("Cancel requested: the training process stops at its next "
                                 "step."))
    else:
        messages.warning(request, _("The run had already finished."))
    return redirect(run)


@login_required
@require_POST
def run_resume(request, run_id):
    run, _membership = _run_in_project(request, run_id)
    try:
        run_services.run_resume(run=run)
    except RunError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, _("Run queued again: it goes on from its last checkpoint."))
    return redirect(run)
