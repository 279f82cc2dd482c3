"""Building inputs of training runs in tests."""

from labeling.models import Prompt
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.submission import annotation_submit
from modelhub.services.jobs import job_run
from training.services.snapshots import snapshot_create


def demonstration_snapshot(project, annotator, n: int):
    """Return a built sft snapshot of n demonstrations (all in the train split)."""
    items = [{"prompt": f"Say something kind about {i}.", "user_id": f"u{i}"} for i in range(n)]
    prompts_import(project=project, records=records_from_items(items))
    Prompt.objects.filter(project=project).update(split="train")
    for i in range(n):
        assignment = assignment_claim_next(project=project, annotator=annotator)
        annotation_submit(assignment=assignment, data={"text": f"{i} is a lovely number."})
    snapshot = snapshot_create(project=project, kind="sft")
    job_run(job_id=snapshot.job_id, worker="test")
    snapshot.refresh_from_db()
    assert snapshot.is_built, snapshot.job.error
    return snapshot


def log_metrics(run, entries):
    """Record logged figures for a run as its trainer process does (a step's logs merge)."""
    from training.services.runs import run_metrics_write

    by_step, latest = {m.pop("step"): m for m in run.series()}, dict(run.latest)
    for entry in entries:
        values = {k: v for k, v in entry.items() if k != "step"}
        by_step.setdefault(entry["step"], {}).update(values)
        latest.update(values)
        run_metrics_write(run_id=run.pk, step=entry["step"], values=by_step[entry["step"]],
                          latest=latest)
    run.latest = latest
