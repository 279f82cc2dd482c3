"""The public API (``/api/v1/``): thin DRF endpoints over the same services as the pages."""

from django.contrib.auth import authenticate
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from labeling import selectors
from labeling.agreement import INSTRUCTGPT_AGREEMENT, INSTRUCTGPT_HELDOUT_AGREEMENT
from labeling.models import Annotation, Assignment, Project, ProjectAgreement, Role, Task
from labeling.services import assignment as assignment_services
from labeling.services import importing
from labeling.services import project as project_services
from labeling.services.figures import project_figures
from labeling.services.metrics import annotator_agreements
from labeling.services.submission import SubmissionConflict, annotation_submit


def api_membership(request, project_id, roles=None):
    """Return the caller's membership (selectors.membership_get) with DRF's 404 and 403."""
    try:
        return selectors.membership_get(user=request.user, project_id=project_id, roles=roles)
    except Http404:
        raise NotFound from None
    except DjangoPermissionDenied:
        raise PermissionDenied from None


def _raise_validation(exc: DjangoValidationError):
    if hasattr(exc, "error_dict"):
        raise ValidationError(
            {
                field: [message for error in errors for message in error.messages]
                for field, errors in exc.error_dict.items()
            }
        )
    raise ValidationError({"non_field_errors": exc.messages})


# --- auth ------------------------------------------------------------------------------


class TokenInput(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)


class TokenApi(APIView):
    """Exchange a username and password for an API token."""

    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(
        request=TokenInput,
        responses=inline_serializer("TokenOutput", {"token": serializers.CharField()}),
    )
    def post(self, request):
        data = TokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = authenticate(
            request, username=data.validated_data["username"],
            password=data.validated_data["password"],
        )
        if user is None or not user.is_active:
            raise ValidationError({"non_field_errors": ["wrong username or password"]})
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


# --- projects --------------------------------------------------------------------------


class ProjectOutput(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = [
            "id", "name", "k", "allow_ties", "overlap", "guidelines", "agreement_sample_rate",
            "agreement_overlap", "lease_minutes", "flags", "gold_rate", "gold_threshold",
            "gold_min_answers", "per_user_cap",
            "dedup_prefix_chars", "split_train", "split_valid", "created_at", "role",
        ]

    def get_role(self, project) -> str:
        return self.context.get("roles", {}).get(project.pk, "")


class ProjectInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    guidelines = serializers.CharField(required=False, allow_blank=True)
    k = serializers.IntegerField(required=False, min_value=2, max_value=9)
    allow_ties = serializers.BooleanField(required=False)
    overlap = serializers.IntegerField(required=False, min_value=1, max_value=50)
    agreement_sample_rate = serializers.FloatField(required=False, min_value=0, max_value=1)
    agreement_overlap = serializers.IntegerField(required=False, min_value=1, max_value=50)
    lease_minutes = serializers.IntegerField(required=False, min_value=1, max_value=24 * 60)
    flags = serializers.ListField(child=serializers.CharField(), required=False)
    gold_rate = serializers.FloatField(required=False, min_value=0, max_value=1)
    gold_threshold = serializers.FloatField(required=False, allow_null=True, min_value=0,
                                            max_value=1)
    gold_min_answers = serializers.IntegerField(required=False, min_value=1)
    per_user_cap = serializers.IntegerField(required=False, min_value=1)
    dedup_prefix_chars = serializers.IntegerField(required=False, min_value=0)
    split_train = serializers.IntegerField(required=False, min_value=0, max_value=100)
    split_valid = serializers.IntegerField(required=False, min_value=0, max_value=100)


class ProjectListApi(APIView):
    @extend_schema(responses=ProjectOutput(many=True))
    def get(self, request):
        projects = selectors.project_list_for_user(user=request.user)
        context = {"roles": selectors.roles_of(user=request.user)}
        return Response(ProjectOutput(projects, many=True, context=context).data)

    @extend_schema(request=ProjectInput, responses={201: ProjectOutput})
    def post(self, request):
        if not selectors.user_can_create_projects(user=request.user):
            raise PermissionDenied("only leads and admins create projects")
        data = ProjectInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            project = project_services.project_create(creator=request.user, **data.validated_data)
        except DjangoValidationError as exc:
            _raise_validation(exc)
        return Response(
            ProjectOutput(project, context={"roles": {project.pk: Role.LEAD}}).data,
            status=status.HTTP_201_CREATED,
        )


class ProjectDetailApi(APIView):
    @extend_schema(responses=ProjectOutput)
    def get(self, request, project_id):
        membership = api_membership(request, project_id)
        context = {"roles": {membership.project_id: membership.role}}
        return Response(ProjectOutput(membership.project, context=context).data)

    @extend_schema(request=ProjectInput(partial=True), responses=ProjectOutput)
    def patch(self, request, project_id):
        membership = api_membership(request, project_id, roles=selectors.LEAD_ROLES)
        data = ProjectInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        try:
            project = project_services.project_update(
                project=membership.project, **data.validated_data
            )
        except DjangoValidationError as exc:
            _raise_validation(exc)
        context = {"roles": {project.pk: membership.role}}
        return Response(ProjectOutput(project, context=context).data)


class MemberInput(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(required=False, trim_whitespace=False, write_only=True)
    role = serializers.ChoiceField(choices=Role.choices)


class MemberOutput(serializers.Serializer):
    username = serializers.CharField(source="user.username")
    role = serializers.CharField()
    created_account = serializers.BooleanField()


class MemberAddApi(APIView):
    @extend_schema(request=MemberInput, responses={201: MemberOutput, 200: MemberOutput})
    def post(self, request, project_id):
        membership = api_membership(request, project_id, roles=selectors.LEAD_ROLES)
        data = MemberInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            member, created = project_services.membership_add(
                project=membership.project, **data.validated_data
            )
        except DjangoValidationError as exc:
            _raise_validation(exc)
        member.created_account = created
        return Response(
            MemberOutput(member).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


# --- prompts ---------------------------------------------------------------------------


class ImportItem(serializers.Serializer):
    prompt = serializers.CharField(required=False)
    messages = serializers.ListField(child=serializers.DictField(), required=False)
    category = serializers.CharField(required=False)
    user_id = serializers.CharField(required=False)
    metadata = serializers.DictField(required=False)
    completions = serializers.ListField(child=serializers.DictField(), required=False)


class ImportOutput(serializers.Serializer):
    added = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    capped = serializers.IntegerField()
    tasks_created = serializers.IntegerField()
    imported = serializers.BooleanField()
    errors = serializers.ListField(child=serializers.DictField())


class PromptImportApi(APIView):
    """Import prompts (JSONL/CSV file, or JSON items); all or nothing unless skip_bad_lines."""

    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "PromptImportFile",
                {
                    "file": serializers.FileField(),
                    "skip_bad_lines": serializers.BooleanField(required=False),
                    "create_demonstrate_tasks": serializers.BooleanField(required=False),
                },
            ),
            "application/json": inline_serializer(
                "PromptImportItems",
                {
                    "items": ImportItem(many=True),
                    "skip_bad_lines": serializers.BooleanField(required=False),
                    "create_demonstrate_tasks": serializers.BooleanField(required=False),
                },
            ),
        },
        responses={200: ImportOutput, 400: ImportOutput},
    )
    def post(self, request, project_id):
        membership = api_membership(request, project_id, roles=selectors.LEAD_ROLES)
        options = {
            "skip_bad_lines": _as_bool(request.data.get("skip_bad_lines")),
            "create_demonstrate_tasks": _as_bool(
                request.data.get("create_demonstrate_tasks"), default=True
            ),
            "source": (
                "api_log" if request.data.get("source") == "api_log" else "imported"
            ),
            "author": None,
        }
        upload = request.FILES.get("file")
        if upload is not None:
            upload.seek(0)
            records = importing.records_from_file(upload, upload.name)
        elif isinstance(request.data.get("items"), list):
            records = importing.records_from_items(request.data["items"])
        else:
            raise ValidationError({"file": ["send a JSONL/CSV 'file' or a JSON list 'items'"]})
        report = importing.prompts_import(
            project=membership.project, records=records, **options
        )
        code = status.HTTP_200_OK if report.imported else status.HTTP_400_BAD_REQUEST
        return Response(report.as_dict(), status=code)


def _as_bool(value, default=False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


# --- the annotator queue -------------------------------------------------------------


class NextInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Task.Kind.choices, required=False, allow_null=True)


class CompletionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()


class NextOutput(serializers.Serializer):
    assignment = serializers.IntegerField()
    task = serializers.IntegerField()
    kind = serializers.CharField()
    prompt = serializers.JSONField()
    messages = serializers.JSONField(allow_null=True)
    category = serializers.CharField(allow_null=True)
    completions = CompletionOutput(many=True)
    expires_at = serializers.DateTimeField()
    flags = serializers.ListField(child=serializers.CharField())
    allow_ties = serializers.BooleanField()


def assignment_payload(assignment) -> dict:
    """Return what an annotator needs to do an assignment, completions in display order."""
    task = assignment.task
    prompt = task.prompt
    project = assignment.project
    return {
        "assignment": assignment.pk,
        "task": task.pk,
        "kind": task.kind,
        "prompt": prompt.display_text if prompt else None,
        "messages": prompt.messages if prompt else None,
        "category": prompt.category if prompt else None,
        "completions": selectors.shown_completions(assignment),
        "expires_at": assignment.expires_at,
        "flags": project.flags,
        "allow_ties": project.allow_ties,
    }


class NextTaskApi(APIView):
    """Give the caller their current assignment or claim the next task; 204 when none."""

    @extend_schema(request=NextInput, responses={200: NextOutput, 204: None})
    def post(self, request, project_id):
        membership = api_membership(request, project_id)
        refusal = assignment_services.work_refusal(membership=membership)
        if refusal:
            raise PermissionDenied(refusal)
        data = NextInput(data=request.data)
        data.is_valid(raise_exception=True)
        assignment = assignment_services.assignment_claim_next(
            project=membership.project,
            annotator=request.user,
            kind=data.validated_data.get("kind"),
        )
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(assignment_payload(assignment))


class RankingEntryInput(serializers.Serializer):
    completion = serializers.IntegerField()
    rank = serializers.IntegerField()
    rating = serializers.IntegerField(required=False, allow_null=True)
    flags = serializers.ListField(child=serializers.CharField(), required=False)


class SubmitInput(serializers.Serializer):
    ranking = RankingEntryInput(many=True, required=False)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    comment = serializers.CharField(required=False, allow_blank=True)
    messages = serializers.ListField(child=serializers.DictField(), required=False)
    category = serializers.CharField(required=False)
    style = serializers.CharField(required=False)
    examples = serializers.ListField(child=serializers.DictField(), required=False)
    time_spent_ms = serializers.IntegerField(required=False, min_value=0)


class AnnotationOutput(serializers.ModelSerializer):
    annotator = serializers.CharField(source="annotator.username")
    display_order = serializers.JSONField(source="assignment.display_order")
    started_at = serializers.DateTimeField(source="assignment.created_at")

    class Meta:
        model = Annotation
        fields = [
            "id", "task", "annotator", "kind", "ranking", "text", "comment", "display_order",
            "gold_score", "time_spent_ms", "started_at", "created_at", "written_prompt",
            "demonstration",
        ]


class SubmitOutput(serializers.Serializer):
    annotation = serializers.IntegerField()
    replayed = serializers.BooleanField()


class SubmitApi(APIView):
    """Submit an assignment; the Idempotency-Key header makes a replay return the first result."""

    @extend_schema(
        request=SubmitInput,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={201: SubmitOutput, 200: SubmitOutput},
    )
    def post(self, request, assignment_id):
        # The service reads the row under its lock and checks it is the caller's.
        assignment = Assignment(pk=assignment_id, annotator_id=request.user.pk)
        data = SubmitInput(data=request.data)
        data.is_valid(raise_exception=True)
        payload = dict(data.validated_data)
        time_spent = payload.pop("time_spent_ms", None)
        if "ranking" in payload:
            payload["ranking"] = [dict(entry) for entry in payload["ranking"]]
        try:
            result = annotation_submit(
                assignment=assignment,
                data=payload,
                idempotency_key=request.headers.get("Idempotency-Key", ""),
                time_spent_ms=time_spent,
            )
        except Assignment.DoesNotExist:
            raise NotFound from None
        except DjangoValidationError as exc:
            _raise_validation(exc)
        except SubmissionConflict as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        code = status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED
        return Response({"annotation": result.annotation.pk, "replayed": result.replayed},
                        status=code)


def _own_assignment(request, assignment_id):
    try:
        return selectors.assignment_get_for_annotator(
            user=request.user, assignment_id=assignment_id
        )
    except Http404:
        raise NotFound from None


class SkipInput(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class SkipApi(APIView):
    @extend_schema(
        request=SkipInput,
        responses=inline_serializer("SkipOutput", {"state": serializers.CharField()}),
    )
    def post(self, request, assignment_id):
        assignment = _own_assignment(request, assignment_id)
        data = SkipInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            skipped = assignment_services.assignment_skip(
                assignment=assignment, reason=data.validated_data.get("reason", "")
            )
        except assignment_services.AssignmentStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response({"state": skipped.state})


class AnnotationListApi(ListAPIView):
    """A project's annotations (leads and engineers), newest first."""

    serializer_class = AnnotationOutput

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, enum=Task.Kind.values),
            OpenApiParameter("since", str, description="ISO date or datetime, inclusive"),
            OpenApiParameter("until", str, description="ISO date or datetime, exclusive"),
        ]
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        membership = api_membership(self.request, self.kwargs["project_id"],
                                 roles=selectors.DATA_ROLES)
        params = self.request.query_params
        kind = params.get("kind")
        if kind and kind not in Task.Kind.values:
            raise ValidationError({"kind": [f"use one of {', '.join(Task.Kind.values)}"]})
        return selectors.annotations_for_project(
            project=membership.project,
            kind=kind,
            since=_parse_when(params.get("since"), "since"),
            until=_parse_when(params.get("until"), "until"),
        )


def _parse_when(value, name):
    if not value:
        return None
    parsed = parse_datetime(value) or parse_date(value)
    if parsed is None:
        raise ValidationError({name: ["use an ISO date (2026-01-31) or datetime"]})
    return parsed


class GoldInput(serializers.Serializer):
    ranking = serializers.DictField(child=serializers.IntegerField(), allow_null=True)


class TaskGoldApi(APIView):
    """Mark a rank task as gold with its expected ranking (leads), or unmark it (null)."""

    @extend_schema(
        request=GoldInput,
        responses=inline_serializer("GoldOutput", {"is_gold": serializers.BooleanField()}),
    )
    def post(self, request, task_id):
        task = Task.objects.filter(pk=task_id).first()
        if task is None:
            raise NotFound
        api_membership(request, task.project_id, roles=selectors.LEAD_ROLES)
        data = GoldInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                task = project_services.task_set_gold(
                    task=task, ranking=data.validated_data["ranking"]
                )
        except DjangoValidationError as exc:
            _raise_validation(exc)
        return Response({"is_gold": task.is_gold})


class AgreementApi(APIView):
    """Inter-annotator agreement of a project (leads and engineers), as last refreshed."""

    @extend_schema(
        responses=inline_serializer(
            "AgreementOutput",
            {
                "method": serializers.CharField(),
                "agreement": serializers.FloatField(allow_null=True),
                "interval": serializers.ListField(child=serializers.FloatField(),
                                                  allow_null=True),
                "confidence": serializers.FloatField(),
                "tasks": serializers.IntegerField(),
                "pairs": serializers.IntegerField(),
                "reference": serializers.DictField(),
                "tau": serializers.FloatField(allow_null=True),
                "tau_histogram": serializers.ListField(child=serializers.DictField()),
                "alpha": serializers.DictField(),
                "consensus_agreement": serializers.FloatField(allow_null=True),
                "trend": serializers.ListField(child=serializers.DictField()),
                "methods": serializers.DictField(),
                "annotators": serializers.ListField(child=serializers.DictField()),
                "computed_at": serializers.DateTimeField(allow_null=True),
            },
        )
    )
    def get(self, request, project_id):
        membership = api_membership(request, project_id, roles=selectors.DATA_ROLES)
        project = membership.project
        stored = ProjectAgreement.objects.filter(project=project).first()
        interval = None
        if stored and stored.interval_low is not None:
            interval = [stored.interval_low, stored.interval_high]
        return Response({
            "method": "pairwise agreement on comparisons: the share of response pairs two "
                      "annotators of a task order the same way (a tie against a strict order "
                      "disagrees; pairs both tie are left out), averaged over annotator pairs; "
                      "95% percentile bootstrap over tasks",
            "agreement": stored.agreement if stored else None,
            "interval": interval,
            "confidence": 0.95,
            "tasks": stored.tasks if stored else 0,
            "pairs": stored.pairs if stored else 0,
            "reference": {"instructgpt_training_labelers": INSTRUCTGPT_AGREEMENT,
                          "instructgpt_heldout_labelers": INSTRUCTGPT_HELDOUT_AGREEMENT},
            "tau": stored.tau if stored else None,
            "tau_histogram": stored.tau_histogram if stored else [],
            "alpha": {
                "ranks": stored.rank_alpha if stored else None,
                "ratings": stored.rating_alpha if stored else None,
                "flags": stored.flag_alpha if stored else None,
            },
            "consensus_agreement": stored.consensus_agreement if stored else None,
            "trend": stored.trend if stored else [],
            "methods": {
                "tau": "Kendall's tau-b between two annotators' rankings of a task, averaged "
                       "over annotator pairs",
                "alpha": "Krippendorff's alpha: ordinal for ranks and 1-7 ratings (a unit is "
                         "one response), nominal for flags (a unit is one flag on one response)",
                "consensus": "Tideman's ranked pairs over the task's rankings; agreement "
                             "with it is pairwise agreement of each ranking with the consensus",
                "trend": "tasks count in the week (Monday) of their latest annotation",
            },
            "annotators": annotator_agreements(project=project),
            "computed_at": stored.computed_at if stored else None,
        })


class StatsApi(APIView):
    """Progress per task kind and split, throughput per day and pace (leads, engineers)."""

    @extend_schema(responses=inline_serializer("StatsOutput", {
        "progress": serializers.ListField(child=serializers.DictField()),
        "throughput": serializers.ListField(child=serializers.DictField()),
        "active_annotators_7d": serializers.IntegerField(),
        "active_annotators_24h": serializers.IntegerField(),
        "queue_depth": serializers.IntegerField(),
        "annotations_per_day_7d": serializers.FloatField(),
        "days_to_finish": serializers.FloatField(allow_null=True),
        "computed_at": serializers.DateTimeField(),
    }))
    def get(self, request, project_id):
        membership = api_membership(request, project_id, roles=selectors.DATA_ROLES)
        figures = project_figures(project=membership.project)
        return Response(figures.stats | {"computed_at": figures.computed_at})
