"""``/api/v1/`` endpoints for dataset snapshots and training runs (leads and engineers).

Annotators see none of it: an object of a project is 404 for outsiders and 403 for
annotators; lists hold only projects where the caller leads or engineers.
"""

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling import selectors
from labeling.api import api_membership
from modelhub.models import ModelVersion
from training.configs import CONFIGS, describe
from training.models import DatasetSnapshot, TrainingRun
from training.services.runs import LOG_TAIL, RunError, run_cancel, run_create, run_resume
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


# --- training runs ---------------------------------------------------------------------


class RunModelOutput(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "name", "kind", "artifact_path"]


class RunOutput(serializers.ModelSerializer):
    status = serializers.CharField(source="job.status")
    progress = serializers.IntegerField(source="job.progress")
    total = serializers.IntegerField(source="job.total")
    attempts = serializers.IntegerField(source="job.attempts")
    error = serializers.CharField(source="job.error")
    started_at = serializers.DateTimeField(source="job.started_at")
    finished_at = serializers.DateTimeField(source="job.finished_at")
    output_model = RunModelOutput(read_only=True, allow_null=True)
    step = serializers.IntegerField(source="job.progress", help_text="optimizer steps done")
    max_steps = serializers.IntegerField(source="job.total",
                                         help_text="steps the run trains for (0 until it starts)")

    class Meta:
        model = TrainingRun
        fields = ["id", "project", "kind", "status", "progress", "total", "attempts", "error",
                  "step", "max_steps", "snapshot", "parent", "reward_model", "sft_snapshot",
                  "config", "seed", "last_checkpoint", "latest", "output_model",
                  "created_at", "started_at", "finished_at"]


class RunDetailOutput(RunOutput):
    metrics = serializers.SerializerMethodField(
        help_text='what the trainer logged, step by step: [{"step": n, "loss": x, ...}]')
    log = serializers.SerializerMethodField(help_text=f"the job log's last {LOG_TAIL} "
                                                      f"characters")

    class Meta(RunOutput.Meta):
        fields = [*RunOutput.Meta.fields, "metrics", "provenance", "output_dir", "log"]

    def get_metrics(self, run) -> list[dict]:
        return run.series()

    def get_log(self, run) -> str:
        return run.job.log[-LOG_TAIL:]


class RunInput(serializers.Serializer):
    project = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=TrainingRun.Kind.choices)
    snapshot = serializers.IntegerField(help_text="the dataset snapshot to train on")
    parent = serializers.IntegerField(help_text="the model to train")
    reward_model = serializers.IntegerField(required=False, allow_null=True,
                                            help_text="ppo: the reward model")
    sft_snapshot = serializers.IntegerField(
        required=False, allow_null=True,
        help_text="reward: demonstrations that set the bias; ppo: the pretraining mix")
    config = serializers.DictField(required=False, default=dict,
                                   help_text="settings of the kind (see the config endpoint)")
    seed = serializers.IntegerField(required=False, default=0, min_value=0,
                                    max_value=2**31 - 1)


# Which table each id of RunInput names, and what to call it in a message.
_RUN_INPUTS = {"snapshot": (DatasetSnapshot, "snapshot"), "parent": (ModelVersion, "model"),
               "reward_model": (ModelVersion, "model"),
               "sft_snapshot": (DatasetSnapshot, "snapshot")}


def _run_inputs(project, values: dict) -> dict:
    """Return the run's snapshots and models by field, each looked up in the project only."""
    found, errors = {}, {}
    for field, (model, noun) in _RUN_INPUTS.items():
        pk = values.get(field)
        if pk is None:
            found[field] = None
            continue
        found[field] = model.objects.filter(project=project, pk=pk).first()
        if found[field] is None:
            errors[field] = [f"no {noun} {pk} in this project"]
    if errors:
        raise ValidationError(errors)
    return found


def _run(request, run_id) -> TrainingRun:
    run = TrainingRun.objects.select_related("job", "output_model").filter(pk=run_id).first()
    if run is None:
        raise NotFound
    api_membership(request, run.project_id, roles=selectors.DATA_ROLES)
    return run


class RunListApi(ListAPIView):
    """List training runs (newest first), or start one (a gpu worker runs it; poll it)."""

    serializer_class = RunOutput

    @extend_schema(parameters=[OpenApiParameter(
        "project", int, description="only this project (else all where you lead or "
                                    "engineer)")])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        wanted = self.request.query_params.get("project")
        if wanted is not None:
            projects = [api_membership(self.request, wanted,
                                       roles=selectors.DATA_ROLES).project.pk]
        else:
            roles = selectors.roles_of(user=self.request.user)
            projects = [pk for pk, role in roles.items() if role in selectors.DATA_ROLES]
        return (TrainingRun.objects.filter(project_id__in=projects)
                .select_related("job", "output_model").order_by("-id"))

    @extend_schema(request=RunInput, responses={201: RunDetailOutput})
    def post(self, request):
        data = RunInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        project = api_membership(request, values["project"], roles=selectors.DATA_ROLES).project
        try:
            run = run_create(project=project, kind=values["kind"], config=values["config"],
                             seed=values["seed"], created_by=request.user,
                             **_run_inputs(project, values))
        except RunError as error:
            raise ValidationError({"non_field_errors": [str(error)]}) from None
        return Response(RunDetailOutput(run).data, status=status.HTTP_201_CREATED)


class RunDetailApi(APIView):
    """A run: its state, progress, metrics series, config, provenance and log tail."""

    @extend_schema(responses=RunDetailOutput)
    def get(self, request, run_id):
        return Response(RunDetailOutput(_run(request, run_id)).data)


class RunCancelApi(APIView):
    """Cancel a run (at once when queued; a running trainer is stopped by its worker)."""

    @extend_schema(request=None, responses=RunDetailOutput)
    def post(self, request, run_id):
        run = run_cancel(run=_run(request, run_id))
        return Response(RunDetailOutput(run).data)


class RunResumeApi(APIView):
    """Queue a failed or cancelled run again; it goes on from its last checkpoint."""

    @extend_schema(request=None, responses={
        200: RunDetailOutput,
        409: OpenApiResponse(description="the run is not failed or cancelled")})
    def post(self, request, run_id):
        run = _run(request, run_id)
        try:
            run_resume(run=run)
        except RunError as error:
            return Response({"detail": str(error)}, status=status.HTTP_409_CONFLICT)
        return Response(RunDetailOutput(run).data)


_SETTINGS = inline_serializer("RunSetting", {
    "name": serializers.CharField(), "group": serializers.CharField(),
    "type": serializers.CharField(), "default": serializers.JSONField(allow_null=True),
    "optional": serializers.BooleanField(), "help": serializers.CharField(),
}, many=True)


class RunConfigApi(APIView):
    """The settings a run of a kind takes: name, group, type, default and help."""

    @extend_schema(responses=inline_serializer("RunConfig", {
        "kind": serializers.CharField(), "settings": _SETTINGS}))
    def get(self, request, kind):
        if kind not in CONFIGS:
            raise NotFound(f"no run kind {kind}: use one of {', '.join(CONFIGS)}")
        return Response({"kind": kind, "settings": describe(kind)})
