"""training tables: immutable dataset snapshots (what training reads), and training runs."""

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from labeling.models import Project
from modelhub.models import Job


class DatasetSnapshot(models.Model):
    """A frozen, hashed export of a project's labels under a filter, in files per split.

    Nothing changes a snapshot once built: training reads its files, and its content
    hash says whether two snapshots hold the same rows.
    """

    class Kind(models.TextChoices):
        SFT = "sft", _("Demonstrations (SFT)")
        PREFERENCE_PAIRS = "preference_pairs", _("Preference pairs (reward model)")
        RANKINGS = "rankings", _("Rankings (K-way reward model)")
        PROMPTS = "prompts", _("Prompts (PPO)")

    class Merge(models.TextChoices):
        PER_ANNOTATOR = "per_annotator", _("One sample per annotator's ranking")
        CONSENSUS = "consensus", _("Consensus by ranked pairs")
        MAJORITY = "majority", _("Majority per pair")

    class PairPolicy(models.TextChoices):
        ALL = "all", _("All C(K,2) pairs")
        ADJACENT = "adjacent", _("Adjacent pairs only")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="snapshot")
    name = models.CharField(_("name"), max_length=100)
    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices)
    # {"splits": [...], "categories": [...], "since": "YYYY-MM-DD", "until": ...,
    #  "min_agreement": float, "exclude_flags": [...], "accepted_only": bool,
    #  "exclude_annotators": [user ids], "exclude_paused": bool}
    filters = models.JSONField(default=dict, blank=True)
    merge = models.CharField(max_length=20, choices=Merge.choices, default=Merge.PER_ANNOTATOR)
    pair_policy = models.CharField(max_length=10, choices=PairPolicy.choices,
                                   default=PairPolicy.ALL)
    margin = models.BooleanField(_("margin from the rating difference"), default=False)
    parquet = models.BooleanField(_("also write Parquet"), default=False)
    license = models.CharField(max_length=50, default="other")
    # Filled by the build: {split: rows}, {split: {category: rows}}, {split: {format: file}}.
    row_counts = models.JSONField(default=dict, blank=True)
    category_counts = models.JSONField(default=dict, blank=True)
    files = models.JSONField(default=dict, blank=True)
    tasks = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True)
    directory = models.CharField(max_length=500, blank=True)
    # The previous built snapshot of the same kind in the project, and what changed.
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    changes = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.name} ({self.kind})"

    def get_absolute_url(self):
        return reverse("training:snapshot_detail", args=[self.pk])

    @property
    def is_built(self) -> bool:
        return bool(self.content_hash)


class TrainingRun(models.Model):
    """One training step of the loop (SFT, reward model or PPO) run as a supervised job.

    The job's worker starts a child process (``python -m training.run <id>``) that trains,
    checkpoints, writes its progress and metrics here and registers the model it made.
    """

    class Kind(models.TextChoices):
        SFT = "sft", _("Supervised fine-tuning (SFT)")
        REWARD = "reward", _("Reward model")
        PPO = "ppo", _("PPO")

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    job = models.OneToOneField(Job, on_delete=models.PROTECT, related_name="training_run")
    kind = models.CharField(_("kind"), max_length=10, choices=Kind.choices)
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.PROTECT,
                                 related_name="runs")
    parent = models.ForeignKey("modelhub.ModelVersion", on_delete=models.PROTECT,
                               related_name="training_runs")
    # PPO: the reward model scored against (and the value model's start).
    reward_model = models.ForeignKey("modelhub.ModelVersion", null=True, blank=True,
                                     on_delete=models.PROTECT, related_name="rewarded_runs")
    # An SFT snapshot: the demonstrations that set a reward model's bias, or PPO's
    # pretraining mix (the ptx term).
    sft_snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True,
                                     on_delete=models.PROTECT, related_name="+")
    # The validated config of the kind (training.sft_config / reward_config), as JSON.
    config = models.JSONField(default=dict)
    seed = models.PositiveIntegerField(default=0)
    # The newest value of each figure the trainer logged ({"loss": x, "reward_mean": y});
    # the whole series is in RunMetric, one row per step.
    latest = models.JSONField(default=dict, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    last_checkpoint = models.CharField(max_length=500, blank=True)
    # What repeats the run: snapshot hash, library versions, the exact command.
    provenance = models.JSONField(default=dict, blank=True)
    output_model = models.OneToOneField(
        "modelhub.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="made_by_run",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.kind} run {self.pk}"

    def get_absolute_url(self):
        return reverse("training:run_detail", args=[self.pk])

    @property
    def step(self) -> int:
        """Return the optimizer steps done: the job's progress, which the trainer reports."""
        return self.job.progress

    @property
    def max_steps(self) -> int:
        """Return the steps the run trains for (0 until training has begun)."""
        return self.job.total

    def series(self) -> list[dict]:
        """Return the logged figures step by step: [{"step": n, "loss": x, ...}]."""
        rows = self.metric_rows.order_by("step").values_list("step", "values")
        return [{"step": step, **values} for step, values in rows]


class RunMetric(models.Model):
    """What a run's trainer logged at one step (merged when it logged twice, as loss and
    then evaluation), written as it goes: appending a step costs one row, however long
    the run."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metric_rows")
    step = models.PositiveIntegerField()
    values = models.JSONField(default=dict)

    class Meta:
        ordering = ["run", "step"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step"], name="runmetric_step_once"),
        ]

    def __str__(self):
        return f"run {self.run_id} step {self.step}"
