from django.urls import path, re_path

from training import views

app_name = "training"

urlpatterns = [
    path("projects/<int:project_id>/datasets/", views.snapshot_list, name="snapshot_list"),
    path("datasets/<int:snapshot_id>/", views.snapshot_detail, name="snapshot_detail"),
    re_path(r"^datasets/(?P<snapshot_id>[0-9]+)/download/"
            r"(?P<split>train|valid|test|card)\.(?P<fmt>jsonl|parquet|md)$",
            views.snapshot_download, name="snapshot_download"),
    path("projects/<int:project_id>/runs/", views.run_list, name="run_list"),
    path("projects/<int:project_id>/runs/new/<slug:kind>/", views.run_new, name="run_new"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<int:run_id>/resume/", views.run_resume, name="run_resume"),
]
