from django.urls import path, re_path

from training import views

app_name = "training"

urlpatterns = [
    path("projects/<int:project_id>/datasets/", views.snapshot_list, name="snapshot_list"),
    path("datasets/<int:snapshot_id>/", views.snapshot_detail, name="snapshot_detail"),
    re_path(r"^datasets/(?P<snapshot_id>[0-9]+)/download/"
            r"(?P<split>train|valid|test|card)\.(?P<fmt>jsonl|parquet|md)$",
            views.snapshot_download, name="snapshot_download"),
]
