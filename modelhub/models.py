"""Model registry, the job mechanism every long task runs on, generation and evaluation."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from labeling.models import Completion, Project, Task


class ModelVersion(models.Model):
    """A registered model: a `save_pretrained` directory with safetensors weights."""

    class Kind(models.TextChoices):
        BASE = "base", _("Base model")
        SFT = "sft", _("Supervised fine-tuned (SFT)")
        REWARD = "reward", _("Reward model")
        POLICY = "policy", _("Policy (PPO)")

    class Status(models.TextChoices):
        READY = "ready", _("Ready")
        ARCHIVED = "archived", _("Archived")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    # The training run and dataset snapshot that made it. They live in the training app,
    # which depends on this one (not the reverse), so they are ids, filled in by it.
    training_run_ref = models.PositiveBigIntegerField(null=True, blank=True)
    snapshot_ref = models.PositiveBigIntegerField(null=True, blank=True)
    artifact_path = models.CharField(_("artifact directory"), max_length=500)
    hub_id = models.CharField(max_length=200, blank=True)
    architecture = models.CharField(max_length=100, blank=True)
    parameter_count = models.PositiveBigIntegerField(default=0)
    is_chat = models.BooleanField(default=False)
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.READY)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="modelversion_name_once"),
        ]

    def __str__(self):
        return f"{self.name} ({self.kind})"

    def get_absolute_url(self):
        return reverse("modelhub:model_detail", args=[self.pk])

    def lineage(self) -> list["ModelVersion"]:
        """Return this version and its ancestors, oldest (the base) first."""
        chain, node, seen = [], self, set()
        while node is not None and node.pk not in seen:
            seen.add(node.pk)
            chain.append(node)
            node = node.parent
        return chain[::-1]


class Job(models.Model):
    """A long task's state: PostgreSQL is the truth, a Celery message only says "try job N".

    A worker claims the row atomically (status queued -> running, lease owner, attempt
    count), heartbeats while it works and finishes it; a redelivered message finds the
    row taken and does nothing. The reconciler re-queues running jobs whose heartbeat
    stopped, up to ``max_attempts``, then fails them with the reason.
    """

    class Kind(models.TextChoices):
        GENERATION = "generation", _("Generation")
        EVALUATION = "evaluation", _("Evaluation")
        SNAPSHOT = "snapshot", _("Dataset snapshot")
        TRAINING = "training", _("Training")

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    queue = models.CharField(max_length=20, default="gpu")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    lease_owner = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    log = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="job_reconcile_idx",
                         condition=Q(status__in=["queued", "running"])),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(attempts__lte=models.F("max_attempts")),
                                   name="job_attempts_capped"),
        ]

    def __str__(self):
        return f"{self.kind} job {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def percent(self) -> int:
        if self.status == self.Status.SUCCEEDED:
            return 100
        return int(100 * self.progress / self.total) if self.total else 0


class GenerationJob(models.Model):
    """Sample K candidates per prompt from one or more models; K make a rank task."""

    class Selection(models.TextChoices):
        NO_RANK_TASK = "no_rank_task", _("Prompts without a ranking task yet")
        SPLIT = "split", _("A split")
        CATEGORY = "category", _("A category")
        IDS = "ids", _("Explicit prompt ids")

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="generation")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    # {"selection": ..., "split": ..., "category": ..., "ids": [...], "limit": n}
    prompt_filter = models.JSONField(default=dict)
    # [{"model": ModelVersion id, "count": n, "temperature", "top_p", "max_new_tokens",
    #   "seed"}]: the K candidates of a prompt, mixed over models and settings.
    samplers = models.JSONField(default=list)
    k = models.PositiveSmallIntegerField()
    create_tasks = models.BooleanField(default=True)
    # Prompt ids resolved when the job first ran: a re-run works on the same list.
    prompt_ids = models.JSONField(default=list, blank=True)
    prompts_done = models.PositiveIntegerField(default=0)
    completions_created = models.PositiveIntegerField(default=0)
    tasks_created = models.PositiveIntegerField(default=0)
    not_distinct = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"generation {self.job_id}"

    def get_absolute_url(self):
        return reverse("modelhub:generation_detail", args=[self.job_id])


class GeneratedCompletion(models.Model):
    """Which job and model wrote a completion: a re-run skips prompts already done."""

    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="outputs")
    completion = models.OneToOneField(Completion, on_delete=models.CASCADE, related_name="+")
    prompt_id = models.BigIntegerField()
    model = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["job", "prompt_id"])]

    def __str__(self):
        return f"completion {self.completion_id} of job {self.job_id}"


class Evaluation(models.Model):
    """InstructGPT-style human evaluation: pairwise tasks of A against B, A's win rate."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="evaluations")
    model_a = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    model_b = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    generation = models.OneToOneField(
        GenerationJob, on_delete=models.PROTECT, related_name="evaluation"
    )
    prompts = models.PositiveIntegerField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"evaluation {self.pk}: {self.model_a} vs {self.model_b}"

    def get_absolute_url(self):
        return reverse("modelhub:evaluation_detail", args=[self.pk])


class EvaluationTask(models.Model):
    """One K=2 ranking task of an evaluation, with which response came from A and B."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="tasks")
    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="+")
    completion_a = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+")
    completion_b = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+")

    def __str__(self):
        return f"task {self.task_id} of evaluation {self.evaluation_id}"
