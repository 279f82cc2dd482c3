"""The labeling tables: projects, members, prompts, completions, tasks, assignments,
annotations and imports. Rules that change state live in ``labeling.services``."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from labeling.flags import DEFAULT_FLAGS


def default_flags():
    return list(DEFAULT_FLAGS)


class Role(models.TextChoices):
    ANNOTATOR = "annotator", _("Annotator")
    LEAD = "lead", _("Lead")
    ENGINEER = "engineer", _("Engineer")


class Category(models.TextChoices):
    GENERATION = "generation", _("Generation")
    OPEN_QA = "open_qa", _("Open QA")
    BRAINSTORMING = "brainstorming", _("Brainstorming")
    CHAT = "chat", _("Chat")
    REWRITE = "rewrite", _("Rewrite")
    SUMMARIZATION = "summarization", _("Summarization")
    CLASSIFICATION = "classification", _("Classification")
    CLOSED_QA = "closed_qa", _("Closed QA")
    EXTRACT = "extract", _("Extract")
    OTHER = "other", _("Other")


class Split(models.TextChoices):
    TRAIN = "train", _("Train")
    VALID = "valid", _("Validation")
    TEST = "test", _("Test")


class Project(models.Model):
    name = models.CharField(_("name"), max_length=200)
    guidelines = models.TextField(_("guidelines (Markdown)"), blank=True)
    k = models.PositiveSmallIntegerField(_("responses per ranking task (K)"), default=4)
    allow_ties = models.BooleanField(_("allow ties"), default=True)
    overlap = models.PositiveSmallIntegerField(_("annotations per task"), default=1)
    agreement_sample_rate = models.FloatField(
        _("share of tasks in the agreement sample"), default=0.0
    )
    agreement_overlap = models.PositiveSmallIntegerField(
        _("annotations per task in the agreement sample"), default=3
    )
    lease_minutes = models.PositiveIntegerField(_("lease length (minutes)"), default=30)
    flags = models.JSONField(_("flags asked per response"), default=default_flags)
    gold_rate = models.FloatField(_("share of gold tasks in the queue"), default=0.05)
    gold_threshold = models.FloatField(
        _("pause an annotator whose gold accuracy falls below (empty: never)"),
        null=True, blank=True,
    )
    gold_min_answers = models.PositiveIntegerField(
        _("gold answers before the threshold applies"), default=5
    )
    per_user_cap = models.PositiveIntegerField(_("prompts per external user"), default=200)
    dedup_prefix_chars = models.PositiveIntegerField(
        _("deduplicate prompts sharing this many leading characters (0: off)"), default=200
    )
    split_train = models.PositiveSmallIntegerField(_("train split (%)"), default=80)
    split_valid = models.PositiveSmallIntegerField(_("validation split (%)"), default=10)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(k__gte=2, k__lte=9), name="project_k_2_to_9"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(
                condition=Q(agreement_sample_rate__gte=0, agreement_sample_rate__lte=1),
                name="project_agreement_rate_share",
            ),
            models.CheckConstraint(
                condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="project_gold_rate_share"
            ),
            models.CheckConstraint(
                condition=Q(lease_minutes__gte=1), name="project_lease_positive"
            ),
            models.CheckConstraint(
                condition=Q(split_train__lte=100 - F("split_valid")), name="project_splits_sum"
            ),
        ]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("labeling:project_detail", args=[self.pk])


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)
    is_active = models.BooleanField(default=True)
    # Shown to the annotator while paused (e.g. gold accuracy under the project threshold).
    paused_reason = models.TextField(blank=True)
    daily_quota = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "project"], name="membership_unique"),
        ]

    def __str__(self):
        return f"{self.user} in {self.project} as {self.role}"


class Prompt(models.Model):
    class Source(models.TextChoices):
        IMPORTED = "imported", _("Imported")
        ANNOTATOR = "annotator", _("Written by an annotator")
        API_LOG = "api_log", _("API log")

    class Style(models.TextChoices):
        PLAIN = "plain", _("Plain")
        FEW_SHOT = "few_shot", _("Few-shot")
        USER_INSPIRED = "user_inspired", _("User-inspired")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField(blank=True)
    # A chat prompt: [{"role": "user"|"assistant"|"system", "content": str}, ...].
    messages = models.JSONField(null=True, blank=True)
    category = models.CharField(max_length=20, choices=Category.choices, default=Category.OTHER)
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.IMPORTED)
    style = models.CharField(max_length=16, choices=Style.choices, default=Style.PLAIN)
    external_user_id = models.CharField(max_length=200, blank=True)
    split = models.CharField(max_length=5, choices=Split.choices)
    content_hash = models.CharField(max_length=64)
    prefix_hash = models.CharField(max_length=64, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="authored_prompts",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "content_hash"], name="prompt_unique_content"
            ),
        ]
        indexes = [
            models.Index(fields=["project", "prefix_hash"]),
            models.Index(fields=["project", "external_user_id"]),
        ]

    def __str__(self):
        return self.display_text[:60]

    @property
    def display_text(self) -> str:
        """Return the prompt as plain text (the last user turn for a chat)."""
        if self.messages:
            return self.messages[-1]["content"]
        return self.text


class Completion(models.Model):
    class Source(models.TextChoices):
        MODEL = "model", _("Model")
        HUMAN = "human", _("Human demonstration")
        IMPORTED = "imported", _("Imported")

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="completions")
    text = models.TextField()
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MODEL)
    # The model that wrote it ("human" for a demonstration) and how it was sampled.
    generator = models.CharField(max_length=200, blank=True)
    generation_params = models.JSONField(default=dict, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.generator or self.source}: {self.text[:40]}"


class Task(models.Model):
    class Kind(models.TextChoices):
        DEMONSTRATE = "demonstrate", _("Write a demonstration")
        RANK = "rank", _("Rank responses")
        WRITE_PROMPT = "write_prompt", _("Write a prompt")

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        COMPLETE = "complete", _("Complete")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    prompt = models.ForeignKey(
        Prompt, null=True, blank=True, on_delete=models.CASCADE, related_name="tasks"
    )
    # Denormalized from the prompt so the claim query needs no join.
    prompt_author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    completions = models.ManyToManyField(Completion, through="TaskCompletion", blank=True)
    required_annotations = models.PositiveSmallIntegerField(default=1)
    # Active (unexpired) plus submitted assignments; kept under required_annotations by
    # the claim, which locks the row, and by the lease sweeper.
    assigned_count = models.PositiveIntegerField(default=0)
    submitted_count = models.PositiveIntegerField(default=0)
    priority = models.IntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    is_gold = models.BooleanField(default=False)
    # For a gold rank task: {completion id (str): rank}.
    gold_ranking = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(is_gold=True) | Q(assigned_count__lte=F("required_annotations")),
                name="task_never_over_overlap",
            ),
            models.CheckConstraint(
                condition=Q(kind="write_prompt") | Q(prompt__isnull=False),
                name="task_prompt_required",
            ),
            models.CheckConstraint(
                condition=Q(is_gold=False) | Q(gold_ranking__isnull=False),
                name="task_gold_has_answer",
            ),
        ]
        indexes = [
            # The queue: open tasks of a project in priority order, walked in index
            # order so the claim stops at the first free task (with and without a kind).
            models.Index(
                fields=["project", "-priority", "id"],
                name="task_queue_idx",
                condition=Q(status="open", is_gold=False),
            ),
            models.Index(
                fields=["project", "kind", "-priority", "id"],
                name="task_queue_kind_idx",
                condition=Q(status="open", is_gold=False),
            ),
            models.Index(fields=["project", "is_gold"], name="task_gold_idx",
                         condition=Q(is_gold=True)),
        ]

    def __str__(self):
        return f"{self.kind} task {self.pk}"


class TaskCompletion(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="task_completions")
    completion = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["task", "completion"], name="taskcompletion_unique"),
            models.UniqueConstraint(fields=["task", "position"], name="taskcompletion_position"),
        ]

    def __str__(self):
        return f"task {self.task_id} response {self.position}"


class Assignment(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active", _("Active")
        SUBMITTED = "submitted", _("Submitted")
        SKIPPED = "skipped", _("Skipped")
        EXPIRED = "expired", _("Expired")

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    # Completion ids in the order this annotator saw them (shuffled per assignment).
    display_order = models.JSONField(default=list, blank=True)
    skip_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="assignment_once"),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="assignment_lease_idx",
                         condition=Q(state="active")),
            models.Index(fields=["annotator", "project", "state"]),
        ]

    def __str__(self):
        return f"assignment {self.pk} ({self.state})"


class ReviewStatus(models.TextChoices):
    PENDING = "pending", _("Not reviewed yet")
    ACCEPTED = "accepted", _("Accepted")
    REJECTED = "rejected", _("Rejected")


class Annotation(models.Model):
    assignment = models.OneToOneField(
        Assignment, on_delete=models.CASCADE, related_name="annotation"
    )
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="annotations"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="annotations")
    kind = models.CharField(max_length=12, choices=Task.Kind.choices)
    # rank: [{"completion": id, "rank": 1.., "rating": 1..7, "flags": [...]}], in display
    # order. Stored as one document so exports stream one row per annotation.
    ranking = models.JSONField(null=True, blank=True)
    # demonstrate: the response; rank: an optional better response written instead.
    text = models.TextField(blank=True)
    comment = models.TextField(blank=True)
    demonstration = models.ForeignKey(
        Completion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    written_prompt = models.ForeignKey(
        Prompt, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    gold_score = models.FloatField(null=True, blank=True)
    # rank: Spearman's rho between display position and rank (agreement.position_bias),
    # and how many of the ranked responses got at least one flag, of how many.
    position_rho = models.FloatField(null=True, blank=True)
    flagged_responses = models.PositiveSmallIntegerField(null=True, blank=True)
    responses = models.PositiveSmallIntegerField(null=True, blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # A lead's review of the demonstration written with this annotation (if any):
    # rejected demonstrations never reach a training dataset.
    review_status = models.CharField(
        max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.PENDING
    )
    review_comment = models.TextField(blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["annotator", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="annotation_idempotency",
            ),
        ]
        indexes = [
            models.Index(fields=["project", "kind", "created_at"]),
            models.Index(
                fields=["project", "review_status", "id"],
                name="annotation_review_idx",
                condition=Q(demonstration__isnull=False),
            ),
        ]

    def __str__(self):
        return f"{self.kind} annotation {self.pk}"


class PromptImport(models.Model):
    """A prompt file uploaded in the browser, imported by a worker."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting for a worker")
        DONE = "done", _("Imported")
        REJECTED = "rejected", _("Rejected: nothing imported")
        FAILED = "failed", _("Failed")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="imports")
    file = models.FileField(upload_to="imports/%Y/%m/")
    file_name = models.CharField(max_length=255)
    skip_bad_lines = models.BooleanField(default=False)
    create_demonstrate_tasks = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"import {self.pk} of {self.file_name}"


class TaskAgreement(models.Model):
    """Stored agreement parts of one multiply-ranked task (refreshed by a periodic job)."""

    task = models.OneToOneField(
        Task, on_delete=models.CASCADE, primary_key=True, related_name="agreement"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    # The task's submitted_count when computed: a differing count marks the row stale.
    annotations = models.PositiveIntegerField()
    # Sum of pairwise agreement over annotator pairs with a defined value, and their count.
    pair_sum = models.FloatField()
    pair_count = models.PositiveIntegerField()
    # The same for Kendall's tau-b (undefined for a ranking that ties everything).
    tau_sum = models.FloatField(default=0.0)
    tau_count = models.PositiveIntegerField(default=0)
    # The ranked-pairs consensus {completion id: rank}; the raw rankings stay as they are.
    consensus = models.JSONField(default=dict)
    # Krippendorff coincidences {"rank" | "rating" | "flag": [[c, k, o_ck], ...]}: they add
    # up over tasks, so the project's alphas come from their sum.
    coincidences = models.JSONField(default=dict)
    # When the task's latest annotation was made: the week it counts in for the trend.
    last_annotated_at = models.DateTimeField(null=True)
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["project"]),
            # The disagreement explorer: lowest agreement first, without sorting them all.
            models.Index(
                "project", models.F("pair_sum") / models.F("pair_count"), "task",
                name="taskagreement_worst_idx", condition=Q(pair_count__gt=0),
            ),
        ]

    def __str__(self):
        return f"agreement of task {self.task_id}"


class AnnotatorTaskAgreement(models.Model):
    """One annotator's agreement parts with the others on one task (leave-one-out)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    agree_sum = models.FloatField()
    pair_count = models.PositiveIntegerField()
    # Pairwise agreement of this annotator's ranking with the task's consensus.
    consensus_agree = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="annotator_task_once"),
        ]
        indexes = [models.Index(fields=["project", "annotator"])]

    def __str__(self):
        return f"agreement of {self.annotator_id} on task {self.task_id}"


class ProjectAgreement(models.Model):
    """The project's overall agreement with its bootstrap interval, as last computed."""

    project = models.OneToOneField(
        Project, on_delete=models.CASCADE, primary_key=True, related_name="agreement"
    )
    agreement = models.FloatField(null=True)
    interval_low = models.FloatField(null=True)
    interval_high = models.FloatField(null=True)
    tasks = models.PositiveIntegerField(default=0)
    pairs = models.PositiveIntegerField(default=0)
    # Mean Kendall tau-b over annotator pairs, and [{"low", "high", "tasks"}] of the
    # per-task mean tau in ten bins over [-1, 1].
    tau = models.FloatField(null=True)
    tau_histogram = models.JSONField(default=list)
    # Krippendorff's alpha (ordinal) for ranks and 1-7 ratings, (nominal) for flags.
    rank_alpha = models.FloatField(null=True)
    rating_alpha = models.FloatField(null=True)
    flag_alpha = models.FloatField(null=True)
    # Mean agreement of each ranking with its task's ranked-pairs consensus.
    consensus_agreement = models.FloatField(null=True)
    # [{"week": "YYYY-MM-DD" (Monday), "agreement", "low", "high", "tasks"}], oldest first.
    trend = models.JSONField(default=list)
    computed_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"agreement of {self.project}"


class ProjectFigures(models.Model):
    """The lead's dashboard figures as last computed (each scans the project's annotations).

    Refreshed with the agreement by the periodic job when the project changed; pages and
    the stats API read this row instead of scanning on every request.
    """

    project = models.OneToOneField(
        Project, on_delete=models.CASCADE, primary_key=True, related_name="figures"
    )
    # selectors.project_stats, annotator_numbers and flag_rates, as JSON.
    stats = models.JSONField(default=dict)
    annotators = models.JSONField(default=dict)
    flags = models.JSONField(default=dict)
    # What the figures were computed from: [last annotation id, finished assignments, day].
    watermark = models.JSONField(default=list)
    computed_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"figures of {self.project}"
