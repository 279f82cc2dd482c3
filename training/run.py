"""python -m training.run <run id>: train one run in this process (the worker starts it).

    python -m training.run 12 --worker gpu-node-1:4242

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

TRAINERS = {"sft": "training.sft", "reward": "training.reward_trainer"}
MODEL_KIND = {"sft": "sft", "reward": "reward", "ppo": "policy"}
_LIBRARIES = ["torch", "transformers", "trl", "accelerate", "datasets", "Django"]


def config_for(kind: str, raw: dict, *, model_path: str, output_dir: str):
    """Return the kind's config dataclass built from a run's JSON config."""
    if kind == "sft":
        from training.sft_config import SFTRunConfig

        return SFTRunConfig(**raw, model_path=model_path, output_dir=output_dir)
    if kind == "reward":
        from training.reward_config import RewardConfig

        return RewardConfig(**raw, model_path=model_path, output_dir=output_dir)
    raise ValueError(f"{kind} runs are not available yet")


def latest_checkpoint(directory: Path) -> Path | None:
    """Return the newest complete checkpoint (trainer_state.json written last), if any."""
    complete = [p for p in directory.glob("checkpoint-*")
                if (p / "trainer_state.json").exists() and p.name.split("-")[-1].isdigit()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


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
    parser.add_argument("--worker", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL reports trainer creation
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # noise in the log
    import django

    django.setup()
    from django.db.models import F
    from transformers import TrainerCallback

    from modelhub.models import Job
    from modelhub.services.registry import model_register
    from training.models import TrainingRun

    run = TrainingRun.objects.select_related("snapshot", "parent", "project").get(pk=args.run)
    out = Path(run.output_dir)
    files = run.snapshot.files
    data = Path(run.snapshot.directory)
    train = str(data / files["train"]["jsonl"])
    valid = str(data / files["valid"]["jsonl"]) if "valid" in files else None
    config = config_for(run.kind, run.config, model_path=run.parent.artifact_path,
                        output_dir=str(out))
    resume = latest_checkpoint(out / "checkpoints")
    TrainingRun.objects.filter(pk=run.pk).update(
        last_checkpoint=str(resume or ""),
        provenance={"snapshot": run.snapshot.content_hash, "parent": run.parent.pk,
                    "seed": run.seed, "versions": _versions(),
                    "command": f"python -m training.run {run.pk}", "config": run.config})

    parent = os.getppid()

    class Progress(TrainerCallback):
        """Write the trainer's steps and logs to the run (and the job's progress bar)."""

        def on_step_end(self, arguments, state, control, **kwargs):
            # Stop at once if the worker that started this process died (this process
            # was orphaned) or lost the job to another attempt: two trainers must never
            # write the same run.
            held = Job.objects.filter(pk=run.job_id, status=Job.Status.RUNNING,
                                      lease_owner=args.worker).update(
                progress=state.global_step, total=state.max_steps)
            if os.getppid() != parent or (args.worker and not held):
                print("training.run: the supervising worker is gone; stopping", flush=True)
                os._exit(3)
            TrainingRun.objects.filter(pk=run.pk).update(step=state.global_step,
                                                         max_steps=state.max_steps)

        def on_log(self, arguments, state, control, logs=None, **kwargs):
            entry = {"step": state.global_step, **{k: v for k, v in (logs or {}).items()
                                                   if isinstance(v, int | float)}}
            fresh = TrainingRun.objects.get(pk=run.pk)
            # One entry per step: the logs of one step (loss, then eval, then the summary)
            # merge, and a resumed attempt's repeat of a step replaces the old values.
            series = [m for m in fresh.metrics if m.get("step") != entry["step"]]
            same = [m for m in fresh.metrics if m.get("step") == entry["step"]]
            merged = {k: v for m in same for k, v in m.items()} | entry
            series.append(merged)
            series.sort(key=lambda m: m["step"])
            TrainingRun.objects.filter(pk=run.pk).update(metrics=series)

        def on_save(self, arguments, state, control, **kwargs):
            TrainingRun.objects.filter(pk=run.pk).update(
                last_checkpoint=str(out / "checkpoints" / f"checkpoint-{state.global_step}"))

    trainer = importlib.import_module(TRAINERS[run.kind])
    train_function = trainer.train_sft if run.kind == "sft" else trainer.train_reward
    metrics = train_function(config, train, valid, callbacks=[Progress()],
                             resume_from_checkpoint=str(resume) if resume else None)
    model = model_register(
        project=run.project, name=f"{run.kind}-run-{run.pk}", kind=MODEL_KIND[run.kind],
        path=str(out), parent=run.parent, training_run_ref=run.pk,
        snapshot_ref=run.snapshot_id,
        metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)})
    TrainingRun.objects.filter(pk=run.pk).update(output_model=model, step=F("step"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
