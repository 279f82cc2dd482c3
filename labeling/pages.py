"""What the leads' and engineers' pages of every app share: the membership check and the
page-or-htmx-fragment response."""

from django.shortcuts import get_object_or_404, render
from django.utils.cache import patch_vary_headers

from labeling import selectors


def data_membership(request, project_id):
    """Return the caller's lead or engineer membership (404 outsider, 403 annotator)."""
    return selectors.membership_get(
        user=request.user, project_id=project_id, roles=selectors.DATA_ROLES
    )


def in_project(request, queryset, **lookup):
    """Return the object (404 if missing) once the caller is a lead or engineer of its project."""
    obj = get_object_or_404(queryset, **lookup)
    return obj, data_membership(request, obj.project_id)


def page_or_fragment(request, page, fragment, context):
    """Render the whole page, or only the fragment for an htmx request."""
    response = render(request, fragment if request.htmx else page, context)
    # The same URL answers with a whole page or a fragment: caches must keep both apart.
    patch_vary_headers(response, ("HX-Request",))
    return response
