"""``/api/v1/`` endpoints for models, generation jobs and evaluations (leads, engineers).

Annotators see none of it: lists hold only projects where the caller leads or
engineers; an object of another project is 404 for outsiders and 403 for annotators.
"""

from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling import selectors
from labeling.api import api_membership
from modelhub.models import Evaluation, GenerationJob, ModelVersion
from modelhub.services.evaluation import evaluation_create, win_rate
from modelhub.services.generation import GenerationError, generation_job_create
from modelhub.services.jobs import job_cancel
from modelhub.services.registry import RegistrationError, model_register


def _data_projects(request) -> list[int]:
    """Return the ids of the projects where the caller is a lead or an engineer."""
    roles = selectors.roles_of(user=request.user)
    wanted = request.query_params.get("project")
    ids = [pid for pid, role in roles.items() if role in selectors.DATA_ROLES]
    if wanted is not None:
        try:
            ids = [pid for pid in ids if pid == int(wanted)]
        except ValueError:
            raise ValidationError({"project": ["must be a project id"]}) from None
    return ids


def _get(model, request, pk, **related):
    obj = model.objects.select_related(*related.get("select", [])).filter(pk=pk).first()
    if obj is None:
        raise NotFound
    api_membership(request, obj.project_id, roles=selectors.DATA_ROLES)
    return obj


_PROJECT_PARAM = OpenApiParameter("project", int, description="only this project")


# --- models ----------------------------------------------------------------------------


class ModelOutput(serializers.ModelSerializer):
    lineage = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "project", "name", "kind", "parent", "lineage", "training_run_ref",
                  "snapshot_ref", "artifact_path", "hub_id", "architecture",
                  "parameter_count", "is_chat", "metrics", "status", "created_at"]

    def get_lineage(self, model) -> list[int]:
        return [m.pk for m in model.lineage()]


class ModelInput(serializers.Serializer):
    project = serializers.IntegerField()
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=ModelVersion.Kind.choices)
    path = serializers.CharField(required=False, allow_blank=True)
    hub_id = serializers.CharField(required=False, allow_blank=True)
    parent = serializers.IntegerField(required=False, allow_null=True)


class ModelListApi(APIView):
    """List the models of your projects, or register one (a server path or a hub id)."""

    @extend_schema(parameters=[_PROJECT_PARAM], responses=ModelOutput(many=True))
    def get(self, request):
        models = ModelVersion.objects.filter(project_id__in=_data_projects(request))
        return Response(ModelOutput(models.select_related("parent"), many=True).data)

    @extend_schema(request=ModelInput, responses={201: ModelOutput})
    def post(self, request):
        data = ModelInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        project = api_membership(request, values["project"], roles=selectors.DATA_ROLES).project
        parent = None
        if values.get("parent"):
            parent = ModelVersion.objects.filter(project=project, pk=values["parent"]).first()
            if parent is None:
                raise ValidationError({"parent": ["no such model in this project"]})
        try:
            model = model_register(
                project=project, name=values["name"], kind=values["kind"],
                path=values.get("path") or None, hub_id=values.get("hub_id") or None,
                parent=parent, created_by=request.user)
        except RegistrationError as error:
            raise ValidationError({"non_field_errors": [str(error)]}) from None
        return Response(ModelOutput(model).data, status=status.HTTP_201_CREATED)


class ModelDetailApi(APIView):
    """A model with its lineage (oldest first)."""

    @extend_schema(responses=ModelOutput)
    def get(self, request, model_id):
        return Response(ModelOutput(_get(ModelVersion, request, model_id)).data)


# --- generation jobs -------------------------------------------------------------------


class GenerationOutput(serializers.ModelSerializer):
    id = serializers.IntegerField(source="job_id")
    status = serializers.CharField(source="job.status")
    progress = serializers.IntegerField(source="job.progress")
    total = serializers.IntegerField(source="job.total")
    attempts = serializers.IntegerField(source="job.attempts")
    error = serializers.CharField(source="job.error")
    created_at = serializers.DateTimeField(source="job.created_at")
    finished_at = serializers.DateTimeField(source="job.finished_at")

    class Meta:
        model = GenerationJob
        fields = ["id", "project", "status", "progress", "total", "attempts", "error",
                  "prompt_filter", "samplers", "k", "create_tasks", "prompts_done",
                  "completions_created", "tasks_created", "not_distinct", "created_at",
                  "finished_at"]


class GenerationInput(serializers.Serializer):
    project = serializers.IntegerField()
    samplers = serializers.ListField(child=serializers.DictField(), min_length=1)
    prompt_filter = serializers.DictField(required=False)
    create_tasks = serializers.BooleanField(required=False, default=True)
    k = serializers.IntegerField(required=False, min_value=2, max_value=9)


class GenerationListApi(APIView):
    """List generation jobs of your projects, or start one."""

    @extend_schema(parameters=[_PROJECT_PARAM], responses=GenerationOutput(many=True))
    def get(self, request):
        jobs = (GenerationJob.objects.filter(project_id__in=_data_projects(request))
                .select_related("job").order_by("-job_id"))
        return Response(GenerationOutput(jobs, many=True).data)

    @extend_schema(request=GenerationInput, responses={201: GenerationOutput})
    def post(self, request):
        data = GenerationInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        project = api_membership(request, values["project"], roles=selectors.DATA_ROLES).project
        try:
            generation = generation_job_create(
                project=project, samplers=values["samplers"],
                prompt_filter=values.get("prompt_filter") or {},
                create_tasks=values["create_tasks"], k=values.get("k"),
                created_by=request.user)
        except (GenerationError, ValueError) as error:
            raise ValidationError({"non_field_errors": [str(error)]}) from None
        return Response(GenerationOutput(generation).data, status=status.HTTP_201_CREATED)


def _generation(request, job_id) -> GenerationJob:
    generation = GenerationJob.objects.select_related("job").filter(job_id=job_id).first()
    if generation is None:
        raise NotFound
    api_membership(request, generation.project_id, roles=selectors.DATA_ROLES)
    return generation


class GenerationDetailApi(APIView):
    """A generation job with its progress."""

    @extend_schema(responses=GenerationOutput)
    def get(self, request, job_id):
        return Response(GenerationOutput(_generation(request, job_id)).data)


class GenerationCancelApi(APIView):
    """Cancel a generation job (at once when queued; at its next chunk when running)."""

    @extend_schema(request=None, responses=GenerationOutput)
    def post(self, request, job_id):
        generation = _generation(request, job_id)
        job_cancel(job=generation.job)
        return Response(GenerationOutput(generation).data)


# --- evaluations -----------------------------------------------------------------------

_RESULT = inline_serializer("WinRate", {
    "win_rate": serializers.FloatField(allow_null=True),
    "interval": serializers.ListField(child=serializers.FloatField(), allow_null=True),
    "tasks": serializers.IntegerField(), "annotated_tasks": serializers.IntegerField(),
    "wins": serializers.IntegerField(), "ties": serializers.IntegerField(),
    "losses": serializers.IntegerField(),
})


class EvaluationOutput(serializers.ModelSerializer):
    generation_job = serializers.IntegerField(source="generation.job_id")
    status = serializers.CharField(source="generation.job.status")
    result = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = ["id", "project", "model_a", "model_b", "prompts", "generation_job",
                  "status", "result", "created_at"]

    @extend_schema_field(_RESULT)
    def get_result(self, evaluation) -> dict:
        return win_rate(evaluation=evaluation)


class EvaluationInput(serializers.Serializer):
    project = serializers.IntegerField()
    model_a = serializers.IntegerField()
    model_b = serializers.IntegerField()
    prompts = serializers.IntegerField(required=False, min_value=1, max_value=5000,
                                       default=100)
    sampling = serializers.DictField(required=False)
    seed = serializers.IntegerField(required=False, default=0)


class EvaluationListApi(APIView):
    """List evaluations of your projects, or start one (A against B on test prompts)."""

    @extend_schema(parameters=[_PROJECT_PARAM], responses=EvaluationOutput(many=True))
    def get(self, request):
        evaluations = (Evaluation.objects.filter(project_id__in=_data_projects(request))
                       .select_related("generation__job"))
        return Response(EvaluationOutput(evaluations, many=True).data)

    @extend_schema(request=EvaluationInput, responses={201: EvaluationOutput})
    def post(self, request):
        data = EvaluationInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        project = api_membership(request, values["project"], roles=selectors.DATA_ROLES).project
        models = ModelVersion.objects.filter(project=project).in_bulk(
            [values["model_a"], values["model_b"]])
        if values["model_a"] not in models or values["model_b"] not in models:
            raise ValidationError({"non_field_errors": ["no such model"]})
        try:
            evaluation = evaluation_create(
                project=project, model_a=models[values["model_a"]],
                model_b=models[values["model_b"]], prompts=values["prompts"],
                sampling=values.get("sampling"), seed=values["seed"],
                created_by=request.user)
        except (GenerationError, ValueError) as error:
            raise ValidationError({"non_field_errors": [str(error)]}) from None
        return Response(EvaluationOutput(evaluation).data, status=status.HTTP_201_CREATED)


class EvaluationDetailApi(APIView):
    """An evaluation with A's win rate over B, its 95% interval and the counts."""

    @extend_schema(responses=EvaluationOutput)
    def get(self, request, evaluation_id):
        evaluation = _get(Evaluation, request, evaluation_id, select=["generation__job"])
        return Response(EvaluationOutput(evaluation).data)
