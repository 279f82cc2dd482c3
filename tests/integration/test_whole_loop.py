"""The whole InstructGPT loop on tiny models, through a real Celery worker and Redis:
demo data -> SFT -> generation -> simulated rankings -> reward model -> PPO -> generation
from the policy. Every job (snapshots, generation, the three training runs) is a message
a worker on the default and gpu queues runs; the trainers are its child processes."""

import shutil
import time

import pytest
from django.core.management import call_command
from transformers import AutoModelForCausalLM

from labeling.management.commands.load_demo import DEMO_NAME
from labeling.models import Annotation, Completion, Project, Prompt, Task
from labeling.services.assignment import assignment_claim_next
from labeling.services.submission import annotation_submit
from modelhub.ml.loading import inspect_checkpoint
from modelhub.models import GeneratedCompletion, Job
from modelhub.services.generation import generation_job_create
from modelhub.services.registry import model_register
from training.models import DatasetSnapshot, TrainingRun
from training.services.runs import run_create
from training.services.snapshots import snapshot_create

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _finished(job_id: int, seconds: float = 240) -> Job:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if not job.is_active:
            return job
        time.sleep(0.25)
    job = Job.objects.get(pk=job_id)
    raise AssertionError(f"job {job_id} did not finish in {seconds} s: {job.log}")


def _succeeded(job_id: int) -> None:
    job = _finished(job_id)
    assert job.status == Job.Status.SUCCEEDED, f"{job}: {job.error}\n{job.log}"


def _snapshot(project, kind: str) -> DatasetSnapshot:
    snapshot = snapshot_create(project=project, kind=kind)
    _succeeded(snapshot.job_id)
    snapshot.refresh_from_db()
    return snapshot


def _train(project, kind, snapshot, parent, config, **inputs) -> TrainingRun:
    run = run_create(project=project, kind=kind, snapshot=snapshot, parent=parent,
                     config=config, **inputs)
    _succeeded(run.job_id)
    run.refresh_from_db()
    assert run.output_model is not None
    return run


def _rank_everything(project, annotator) -> int:
    """Rank every open ranking task as a labeler who likes longer answers; return how many."""
    ranked = 0
    while (assignment := assignment_claim_next(project=project, annotator=annotator,
                                               kind=Task.Kind.RANK)) is not None:
        lengths = dict(Completion.objects.filter(pk__in=assignment.display_order)
                       .values_list("pk", "text"))
        order = sorted(assignment.display_order, key=lambda c: (-len(lengths[c]), c))
        annotation_submit(assignment=assignment, data={"ranking": [
            {"completion": c, "rank": i + 1, "rating": max(1, 7 - i)}
            for i, c in enumerate(order)]})
        ranked += 1
    return ranked


def test_the_whole_loop_on_tiny_models(start_worker, run_roots, child_database, tiny_model):
    tmp_path = run_roots
    start_worker("default,gpu", name="loop")

    # Demo data: prompts, ranking tasks with four imported responses, demonstrations.
    call_command("load_demo", stdout=open("/dev/null", "w"))  # noqa: SIM115
    project = Project.objects.get(name=DEMO_NAME)
    Prompt.objects.filter(project=project).update(split="train")
    shutil.copytree(tiny_model, tmp_path / "models" / "base")
    base = model_register(project=project, name="base", kind="base",
                          path=str(tmp_path / "models" / "base"))

    # Step 1: SFT on the demonstrations.
    demonstrations = _snapshot(project, "sft")
    assert demonstrations.row_counts["train"] >= 20
    sft = _train(project, "sft", demonstrations, base, {
        "max_steps": 6, "learning_rate": 3e-3, "per_device_train_batch_size": 4,
        "logging_steps": 1, "save_steps": 3, "warmup_ratio": 0.0}).output_model
    assert sft.kind == "sft" and sft.parent_id == base.pk

    # Generation: the SFT model writes four candidates for prompts without a ranking task.
    generation = generation_job_create(
        project=project, samplers=[{"model": sft.pk, "count": 4, "max_new_tokens": 12,
                                    "temperature": 1.0, "seed": 1}],
        prompt_filter={"selection": "no_rank_task", "limit": 12})
    _succeeded(generation.job_id)
    assert Task.objects.filter(project=project, kind=Task.Kind.RANK,
                               prompt_id__in=generation.prompt_ids).count() == 12

    # Simulated rankings of the imported and the generated candidates.
    ranker = project.memberships.get(user__username="annotator1").user
    assert _rank_everything(project, ranker) >= 12 + 20
    assert Annotation.objects.filter(assignment__task__project=project,
                                     ranking__isnull=False).exists()

    # Step 2: the reward model, from the SFT model, its bias set on the demonstrations.
    rankings = _snapshot(project, "rankings")
    rm_run = _train(project, "reward", rankings, sft, {
        "max_steps": 4, "per_device_prompts": 4, "learning_rate": 1e-3, "logging_steps": 1,
        "save_steps": 2, "max_length": 96}, sft_snapshot=demonstrations)
    reward_model = rm_run.output_model
    assert reward_model.kind == "reward" and reward_model.parent_id == sft.pk
    assert reward_model.metrics["reward_bias_source"] == "demonstrations"
    assert inspect_checkpoint(reward_model.artifact_path, reward=True)["architecture"] == (
        "GPT2ForSequenceClassification")

    # Step 3: PPO-ptx on the prompts, against the reward model, with the pretraining mix.
    prompts = _snapshot(project, "prompts")
    ppo_run = _train(project, "ppo", prompts, sft, {
        "max_steps": 3, "rollout_prompts": 8, "mini_batch_prompts": 4, "response_length": 12,
        "learning_rate": 1e-4, "save_steps": 2, "ptx_batch_size": 4, "ptx_length": 64},
        reward_model=reward_model, sft_snapshot=demonstrations)
    policy = ppo_run.output_model
    assert policy.kind == "policy" and policy.parent_id == sft.pk
    assert [m.pk for m in policy.lineage()] == [base.pk, sft.pk, policy.pk]
    assert [m["step"] for m in ppo_run.series()] == [1, 2, 3]
    for key in ("reward_mean", "kl", "entropy", "clipfrac", "value_loss", "ptx_loss",
                "response_length"):
        assert key in ppo_run.series()[-1], key
    assert ppo_run.provenance["reward_model"] == reward_model.pk
    assert ppo_run.last_checkpoint.endswith("checkpoint-2")
    AutoModelForCausalLM.from_pretrained(policy.artifact_path)

    # The loop turns again: the policy writes candidates for new ranking tasks.
    again = generation_job_create(
        project=project, samplers=[{"model": policy.pk, "count": 2, "max_new_tokens": 12,
                                    "seed": 2}, {"model": sft.pk, "count": 2,
                                                 "max_new_tokens": 12, "seed": 3}],
        prompt_filter={"selection": "no_rank_task", "limit": 4})
    _succeeded(again.job_id)
    made = GeneratedCompletion.objects.filter(job=again)
    assert made.filter(model=policy).count() == 4 * 2
    assert _rank_everything(project, ranker) == 4
