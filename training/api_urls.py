from django.urls import path

from training import api

urlpatterns = [
    path("projects/<int:project_id>/snapshots/", api.SnapshotListApi.as_view(),
         name="api_snapshots"),
    path("snapshots/<int:snapshot_id>/", api.SnapshotDetailApi.as_view(), name="api_snapshot"),
    path("snapshots/<int:snapshot_id>/download/", api.SnapshotDownloadApi.as_view(),
         name="api_snapshot_download"),
    path("training-runs/", api.RunListApi.as_view(), name="api_runs"),
    path("training-runs/<int:run_id>/", api.RunDetailApi.as_view(), name="api_run"),
    path("training-runs/<int:run_id>/cancel/", api.RunCancelApi.as_view(),
         name="api_run_cancel"),
    path("training-runs/<int:run_id>/resume/", api.RunResumeApi.as_view(),
         name="api_run_resume"),
    path("training-runs/config/<str:kind>/", api.RunConfigApi.as_view(),
         name="api_run_config"),
]
