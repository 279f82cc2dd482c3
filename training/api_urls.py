from django.urls import path

from training import api

urlpatterns = [
    path("projects/<int:project_id>/snapshots/", api.SnapshotListApi.as_view(),
         name="api_snapshots"),
    path("snapshots/<int:snapshot_id>/", api.SnapshotDetailApi.as_view(), name="api_snapshot"),
    path("snapshots/<int:snapshot_id>/download/", api.SnapshotDownloadApi.as_view(),
         name="api_snapshot_download"),
]
