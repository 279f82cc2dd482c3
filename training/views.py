"""Pages for leads and engineers: dataset snapshots, their build progress and their files.

Every page is for the project's leads and engineers (selectors.DATA_ROLES): an outsider
gets 404, an annotator 403. A snapshot is reached by its own id; the view loads it
first, then checks the caller's membership in its project.
"""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_vary_headers
from django.utils.translation import gettext as _

from labeling import selectors
from labeling.flags import FLAGS
from labeling.models import Category, Split
from training.forms import SnapshotForm
from training.models import DatasetSnapshot
from training.services.snapshots import SnapshotError, snapshot_create, snapshot_file

LIST_LENGTH = 50
LOG_TAIL_LINES = 40
# What the download URL may name: a split's file in a data format, or the dataset card.
CONTENT_TYPES = {"jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet",
                 "md": "text/markdown; charset=utf-8"}


def _data_membership(request, project_id):
    return selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.DATA_ROLES
    )


def _snapshot_in_project(request, snapshot_id, queryset=None):
    """Return the snapshot (404 if missing) and the caller's lead or engineer membership."""
    queryset = queryset if queryset is not None else DatasetSnapshot.objects.all()
    snapshot = get_object_or_404(queryset, pk=snapshot_id)
    return snapshot, _data_membership(request, snapshot.project_id)


def _page_or_fragment(request, page, fragment, context):
    response = render(request, fragment if request.htmx else page, context)
    # The same URL answers with a whole page or a fragment: caches must keep both apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


@login_required
def snapshot_list(request, project_id):
    membership = _data_membership(request, project_id)
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
    return _page_or_fragment(request, "training/snapshot_list.html",
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
    return _page_or_fragment(request, "training/snapshot_detail.html",
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
