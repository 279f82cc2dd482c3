"""``/api/v1/`` endpoints for dataset snapshots (leads and engineers; annotators none)."""

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling import selectors
from labeling.api import api_membership
from training.models import DatasetSnapshot
from training.services.snapshots import SnapshotError, snapshot_create, snapshot_file


class SnapshotOutput(serializers.ModelSerializer):
    status = serializers.CharField(source="job.status")
    progress = serializers.IntegerField(source="job.progress")
    total = serializers.IntegerField(source="job.total")
    error = serializers.CharField(source="job.error")

    class Meta:
        model = DatasetSnapshot
        fields = ["id", "project", "name", "kind", "status", "progress", "total", "error",
                  "filters", "merge", "pair_policy", "margin", "parquet", "license",
                  "row_counts", "category_counts", "files", "tasks", "content_hash",
                  "previous", "changes", "created_at"]


class SnapshotInput(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=DatasetSnapshot.Kind.choices)
    filters = serializers.DictField(required=False)
    merge = serializers.ChoiceField(choices=DatasetSnapshot.Merge.choices, required=False,
                                    default=DatasetSnapshot.Merge.PER_ANNOTATOR)
    pair_policy = serializers.ChoiceField(choices=DatasetSnapshot.PairPolicy.choices,
                                          required=False,
                                          default=DatasetSnapshot.PairPolicy.ALL)
    margin = serializers.BooleanField(required=False, default=False)
    parquet = serializers.BooleanField(required=False, default=False)
    license = serializers.CharField(max_length=50, required=False, default="other")


def _snapshot(request, snapshot_id) -> DatasetSnapshot:
    snapshot = DatasetSnapshot.objects.select_related("job").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise NotFound
    api_membership(request, snapshot.project_id, roles=selectors.DATA_ROLES)
    return snapshot


class SnapshotListApi(APIView):
    """List a project's snapshots, or create one (built by a worker; poll its status)."""

    @extend_schema(responses=SnapshotOutput(many=True))
    def get(self, request, project_id):
        project = api_membership(request, project_id, roles=selectors.DATA_ROLES).project
        snapshots = DatasetSnapshot.objects.filter(project=project).select_related("job")
        return Response(SnapshotOutput(snapshots, many=True).data)

    @extend_schema(request=SnapshotInput, responses={201: SnapshotOutput})
    def post(self, request, project_id):
        project = api_membership(request, project_id, roles=selectors.DATA_ROLES).project
        data = SnapshotInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            snapshot = snapshot_create(project=project, created_by=request.user,
                                       **data.validated_data)
        except SnapshotError as error:
            raise ValidationError({"non_field_errors": [str(error)]}) from None
        return Response(SnapshotOutput(snapshot).data, status=status.HTTP_201_CREATED)


class SnapshotDetailApi(APIView):
    """A snapshot: its filter, counts, hash, files and what changed since the last one."""

    @extend_schema(responses=SnapshotOutput)
    def get(self, request, snapshot_id):
        return Response(SnapshotOutput(_snapshot(request, snapshot_id)).data)


class SnapshotDownloadApi(APIView):
    """Stream one split of a built snapshot (JSONL or Parquet), or its dataset card."""

    def perform_content_negotiation(self, request, force=False):
        # "format" names the file format here (jsonl, parquet), not a DRF renderer.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[
            OpenApiParameter("split", str, description="train, valid or test; or card"),
            OpenApiParameter("format", str, enum=["jsonl", "parquet"]),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def get(self, request, snapshot_id):
        snapshot = _snapshot(request, snapshot_id)
        try:
            path = snapshot_file(snapshot=snapshot, split=request.query_params.get("split",
                                                                                    "train"),
                                 fmt=request.query_params.get("format", "jsonl"))
        except SnapshotError as error:
            raise NotFound(str(error)) from None
        return FileResponse(path.open("rb"), as_attachment=True,
                            filename=f"snapshot-{snapshot.pk}-{path.name}")
