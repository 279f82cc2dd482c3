"""python -m training.run <run id>: train one run in this process (the worker starts it).

    python -m training.run 12 --worker gpu-node-1:4242   (the job's lease owner)

Reads the run's snapshot files and parent model, trains with the kind's trainer,
checkpoints under the run's output directory (a later attempt resumes from the last
complete checkpoint, with the step count and metrics going on), writes progress and
metrics to the run as the trainer logs them, and registers the model it made with its
lineage. A crash exits non-zero; the supervising worker reports it and lives on.
"""

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

# kind -> (module, function) of the trainer; imported in the child only (torch).
TRAINERS = {"sft": ("training.sft", "train_sft"),
            "reward": ("training.reward_trainer", "train_reward"),
            "ppo": ("training.ppo", "train_ppo")}
MODEL_KIND = {"sft": "sft", "reward": "reward", "ppo": "policy"}
_LIBRARIES = ["torch", "transformers", "trl", "accelerate", "datasets", "Django"]


def split_file(snapshot, split: str) -> str | None:
    """Return the JSONL file of a snapshot's split, or None when the snapshot has none."""
    files = snapshot.files
    if split not in files:
        return None
    return str(Path(snapshot.directory) / files[split]["jsonl"])


def _versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=int)
    parser.add_argument("--worker", required=True,
                        help="the lease owner of the run's job (the supervising worker)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL reports trainer creation
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # noise in the log
    import django

    django.setup()
    from transformers import TrainerCallback

    from modelhub.services.jobs import JobCancelled, JobContext, JobLost
    from modelhub.services.registry import model_register
    from training.checkpoints import is_complete, latest_checkpoint, mark_complete
    from training.configs import config_for
    from training.models import TrainingRun
    from training.services.runs import run_metrics_write

    run = TrainingRun.objects.select_related(
        "snapshot", "parent", "project", "job", "reward_model", "sft_snapshot").get(pk=args.run)
    out = Path(run.output_dir)
    train = split_file(run.snapshot, "train")
    valid = split_file(run.snapshot, "valid")
    paths, extra = {}, {}
    if run.kind == "ppo":
        paths["reward_model_path"] = run.reward_model.artifact_path
        if run.sft_snapshot is not None:
            paths["ptx_data_path"] = split_file(run.sft_snapshot, "train")
    elif run.kind == "reward" and run.sft_snapshot is not None:
        from training.reward_trainer import read_rows

        demonstrations = split_file(run.sft_snapshot, "train")
        # None would fall back to the best-ranked responses: an empty list says why not.
        extra["demonstrations"] = read_rows(demonstrations) if demonstrations else []
    config = config_for(run.kind, run.config, model_path=run.parent.artifact_path,
                        output_dir=str(out), **paths)
    resume = latest_checkpoint(out / "checkpoints")
    # Under torch.distributed.run (one process per GPU) every process trains; only the
    # first writes to the run, marks checkpoints and registers the model.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    main_process = int(os.environ.get("RANK", "0")) == 0
    command = f"python -m training.run {run.pk}"
    if world_size > 1:
        command = (f"python -m torch.distributed.run --standalone --nproc_per_node="
                   f"{world_size} -m training.run {run.pk}")
    TrainingRun.objects.filter(pk=run.pk if main_process else None).update(
        last_checkpoint=str(resume or ""),
        provenance={"snapshot": run.snapshot.content_hash, "parent": run.parent.pk,
                    "resumed_from": resume.name if resume else None,
                    "reward_model": run.reward_model_id,
                    "sft_snapshot": run.sft_snapshot.content_hash if run.sft_snapshot else None,
                    "seed": run.seed, "versions": _versions(), "processes": world_size,
                    "command": command, "config": run.config})

    parent = os.getppid()
    context = JobContext(run.job, args.worker)
    # What this run logged, by step (read once: a resumed attempt goes on), and the newest
    # value of each figure.
    series = {m.pop("step"): m for m in run.series()}
    latest = dict(run.latest)

    class Progress(TrainerCallback):
        """Write the trainer's steps and logs to the run (and the job's progress bar)."""

        def on_step_end(self, arguments, state, control, **kwargs):
            if not main_process:
                return  # the first process stops the others if it must stop
            # The job's progress, through the job mechanism's own lease check: stop at once
            # if the worker that started this process died (this process was orphaned),
            # lost the job to another attempt, or the run was cancelled. Two trainers must
            # never write the same run.
            try:
                context.progress(state.global_step, state.max_steps)
            except (JobLost, JobCancelled):
                gone = True
            else:
                gone = os.getppid() != parent
            if gone:
                print("training.run: the supervising worker is gone; stopping", flush=True)
                os._exit(3)

        def on_log(self, arguments, state, control, logs=None, **kwargs):
            if not main_process:
                return
            # One row per step: the logs of one step (loss, then eval, then the summary)
            # merge, and a resumed attempt's repeat of a step replaces the old values.
            entry = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            values = series.setdefault(state.global_step, {})
            values.update(entry)
            latest.update(entry)
            run_metrics_write(run_id=run.pk, step=state.global_step, values=values,
                              latest=latest)

        def on_save(self, arguments, state, control, **kwargs):
            if not main_process:
                return
            folder = out / "checkpoints" / f"checkpoint-{state.global_step}"
            if not is_complete(folder):
                # transformers' Trainer has written the checkpoint (trainer_state.json
                # last); flushed to disk, it gets the marker that resuming looks for.
                mark_complete(folder, {"kind": run.kind, "step": state.global_step,
                                       "best_metric": state.best_metric,
                                       "config": config.to_dict()})
            TrainingRun.objects.filter(pk=run.pk).update(last_checkpoint=str(folder))

    module, function = TRAINERS[run.kind]
    train_function = getattr(importlib.import_module(module), function)
    metrics = train_function(config, train, valid, callbacks=[Progress()],
                             resume_from_checkpoint=str(resume) if resume else None, **extra)
    if not main_process:
        return 0
    with context.fenced():  # only while this attempt still holds the job
        model = model_register(
            project=run.project, name=f"{run.kind}-run-{run.pk}", kind=MODEL_KIND[run.kind],
            path=str(out), parent=run.parent, training_run_ref=run.pk,
            snapshot_ref=run.snapshot_id,
            metrics={k: v for k, v in metrics.items()
                     if isinstance(v, int | float) or k == "reward_bias_source"})
        TrainingRun.objects.filter(pk=run.pk).update(output_model=model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
