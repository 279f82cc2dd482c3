"""Training runs: created with a validated config, run by a worker in a child process.

The job handler (gpu queue) starts ``python -m training.run <id>`` and supervises it: it
polls the child, relays a cancel by terminating it, and turns a crash (an exception, an
out-of-memory kill) into a failed run with the tail of the child's log, while the
worker itself lives on. The child trains with the kind's trainer, writes progress and
metrics to the run, checkpoints as it goes and, on a later attempt (the reconciler
re-queues the job of a worker that died), resumes from the last complete checkpoint.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from modelhub.models import Job, ModelVersion
from modelhub.services.jobs import JobContext, job_cancel, job_create, job_handler, job_retry
from training.configs import config_for
from training.models import DatasetSnapshot, RunMetric, TrainingRun

POLL_SECONDS = 1.0
TERMINATE_GRACE_SECONDS = 10.0
LOG_TAIL = 4000

# Which snapshot kind each run kind reads.
SNAPSHOT_KIND = {
    TrainingRun.Kind.SFT: DatasetSnapshot.Kind.SFT,
    TrainingRun.Kind.REWARD: DatasetSnapshot.Kind.RANKINGS,
    TrainingRun.Kind.PPO: DatasetSnapshot.Kind.PROMPTS,
}


class RunError(ValueError):
    """A training run that cannot be created as asked."""


def run_create(*, project, kind: str, snapshot: DatasetSnapshot, parent: ModelVersion,
               config: dict | None = None, seed: int = 0, created_by=None,
               reward_model: ModelVersion | None = None,
               sft_snapshot: DatasetSnapshot | None = None) -> TrainingRun:
    """Validate a run against its inputs and queue it on the gpu queue.

    ``reward_model``: a PPO run's reward model (required there, refused elsewhere).
    ``sft_snapshot``: an SFT snapshot, the demonstrations that set a reward model's bias
    or PPO's pretraining mix (optional; refused for SFT runs).
    """
    if kind not in SNAPSHOT_KIND:
        raise RunError(f"kind must be one of {', '.join(SNAPSHOT_KIND)}")
    inputs = [snapshot, parent, reward_model, sft_snapshot]
    if any(item is not None and item.project_id != project.pk for item in inputs):
        raise RunError("the snapshots and the models must belong to this project")
    if snapshot.kind != SNAPSHOT_KIND[kind]:
        raise RunError(f"a {kind} run reads a {SNAPSHOT_KIND[kind]} snapshot, "
                       f"not {snapshot.kind}")
    if parent.kind == ModelVersion.Kind.REWARD:
        raise RunError("the model to train must be a language model, not a reward model")
    if parent.status != ModelVersion.Status.READY:
        raise RunError("the model to train is archived")
    if kind == TrainingRun.Kind.PPO:
        if reward_model is None:
            raise RunError("a PPO run needs a reward model")
        if reward_model.kind != ModelVersion.Kind.REWARD:
            raise RunError(f"{reward_model.name} is a {reward_model.kind} model, "
                           f"not a reward model")
    elif reward_model is not None:
        raise RunError(f"only PPO runs take a reward model, not {kind} runs")
    if sft_snapshot is not None:
        if kind == TrainingRun.Kind.SFT:
            raise RunError("an SFT run reads one snapshot")
        if sft_snapshot.kind != DatasetSnapshot.Kind.SFT:
            raise RunError(f"the demonstrations must be an sft snapshot, "
                           f"not {sft_snapshot.kind}")
    for item in (snapshot, sft_snapshot):
        if item is not None and not item.is_built:
            raise RunError(f"the snapshot {item.name} is not built yet")
    config = dict(config or {})
    validate_config(kind, config)
    with transaction.atomic():
        job = job_create(project=project, kind=Job.Kind.TRAINING, queue="gpu",
                         created_by=created_by)
        run = TrainingRun.objects.create(
            project=project, job=job, kind=kind, snapshot=snapshot, parent=parent,
            reward_model=reward_model, sft_snapshot=sft_snapshot,
            config=config, seed=seed, created_by=created_by,
            output_dir=str(Path(settings.MODEL_ROOT) / "runs" / f"{kind}-{job.pk}"),
        )
    return run


def run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel a run: at once when queued; a running child is terminated by its worker."""
    job_cancel(job=run.job)
    run.job.refresh_from_db()
    return run


def run_resume(*, run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again: it goes on from its last complete checkpoint."""
    if run.output_model_id is not None:
        raise RunError("this run has finished and registered its model")
    if not job_retry(job=run.job):
        raise RunError(f"only a failed or cancelled run can be resumed, not a "
                       f"{run.job.status} one")
    run.job.refresh_from_db()
    return run


def run_metrics_write(*, run_id: int, step: int, values: dict, latest: dict) -> None:
    """Record what the trainer logged at a step (replacing that step's row) and the newest
    value of each figure; one row, not the whole series, however long the run."""
    with transaction.atomic():
        RunMetric.objects.bulk_create(
            [RunMetric(run_id=run_id, step=step, values=values)], update_conflicts=True,
            unique_fields=["run", "step"], update_fields=["values"])
        TrainingRun.objects.filter(pk=run_id).update(latest=latest)


def validate_config(kind: str, config: dict) -> None:
    """Raise RunError unless the config builds the kind's config dataclass."""
    try:
        config_for(kind, config, model_path="model", output_dir="out")
    except (TypeError, ValueError) as error:
        raise RunError(f"invalid {kind} config: {error}") from None


def log_tail(path: Path, size: int = LOG_TAIL) -> str:
    """Return the last ``size`` bytes of a log from a line start ("" if unreadable)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            start = max(0, handle.tell() - size)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return ""
    if start and b"\n" in data:
        data = data.split(b"\n", 1)[1]  # the first line was cut: drop it
    return data.decode("utf-8", "replace")


def train_log(run: TrainingRun) -> Path:
    """Return where the run's training process writes its output."""
    return Path(run.output_dir) / "train.log"


def _stop(child: subprocess.Popen) -> None:
    """Terminate the child (SIGTERM, then SIGKILL after a grace period)."""
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def training_processes(kind: str) -> int:
    """Return how many processes a run trains in on this worker (one per GPU)."""
    del kind  # every kind: transformers' Trainer and training.ppo both run on DDP
    value = str(settings.TRAINING_PROCESSES).strip().lower()
    if value == "auto":
        import torch  # the gpu worker has it; web processes never get here

        return max(1, torch.cuda.device_count())
    try:
        processes = int(value)
    except ValueError:
        raise RuntimeError(f"LAOSHI_TRAINING_PROCESSES must be 'auto' or a whole number, "
                           f"not {value!r}") from None
    return max(1, processes)


@job_handler(Job.Kind.TRAINING)
def training_run(context: JobContext) -> None:
    """Start the run's child process and supervise it until it ends."""
    run = TrainingRun.objects.get(job=context.job)
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = train_log(run)
    processes = training_processes(run.kind)
    command = [sys.executable, "-m", "training.run", str(run.pk), "--worker", context.worker]
    if processes > 1:
        # One process per GPU: torch.distributed.run sets RANK/WORLD_SIZE, which
        # transformers' Trainer reads for DDP; a SIGTERM to it reaches every process.
        command[1:2] = ["-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={processes}", "-m"]
    context.log(f"starting {' '.join(command)}")
    with log_path.open("ab") as log:
        child = subprocess.Popen(command, cwd=settings.BASE_DIR, stdout=log,
                                 stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            while child.poll() is None:
                time.sleep(POLL_SECONDS)
                context.check()  # raises on cancel (or a lost lease): the child stops
        except BaseException:
            _stop(child)
            raise
    if child.returncode != 0:
        reason = (f"killed by signal {-child.returncode}" if child.returncode < 0
                  else f"exit status {child.returncode}")
        raise RuntimeError(f"the training process failed ({reason}):\n{log_tail(log_path)}")
    run.refresh_from_db()
    if run.output_model_id is None:
        raise RuntimeError("the training process ended without registering its model")
