"""The job mechanism, registry, generation and evaluation services, in-process."""

import shutil
from datetime import timedelta

import pytest
import torch
from django.utils import timezone

from labeling.models import Annotation, Completion, Prompt, Task, TaskCompletion
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import project_update
from labeling.services.submission import annotation_submit
from modelhub.models import GeneratedCompletion, Job, ModelVersion
from modelhub.services import jobs
from modelhub.services.evaluation import evaluation_create, win_rate
from modelhub.services.generation import GenerationError, generation_job_create
from modelhub.services.registry import RegistrationError, model_register


@pytest.fixture
def prompts(project):
    items = [{"prompt": f"Write a line about the number {i}.", "user_id": f"u{i}"}
             for i in range(6)]
    prompts_import(project=project, records=records_from_items(items),
                   create_demonstrate_tasks=False)
    return list(Prompt.objects.filter(project=project).order_by("pk"))


def test_registration_records_the_model(base, tiny_model):
    assert base.kind == "base" and base.parameter_count > 0
    assert base.architecture == "GPT2LMHeadModel"


def test_registration_refuses_a_pickle_checkpoint(project, model_root):
    pickled = model_root / "pickled"
    shutil.copytree(model_root / "tiny", pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    with pytest.raises(RegistrationError, match="safetensors"):
        model_register(project=project, name="pickled", kind="base", path=str(pickled))
    assert not ModelVersion.objects.exists()


def test_registration_refuses_paths_outside_the_model_roots(project, tiny_model, settings,
                                                            tmp_path):
    settings.MODEL_REGISTRY_ROOTS = [tmp_path / "elsewhere"]
    with pytest.raises(RegistrationError, match="outside"):
        model_register(project=project, name="x", kind="base", path=str(tiny_model))


def _generation(project, base, **kw):
    samplers = kw.pop("samplers", [{"model": base.pk, "count": 4, "temperature": 1.0,
                                    "max_new_tokens": 8, "seed": 3}])
    return generation_job_create(project=project, samplers=samplers,
                                 prompt_filter={"selection": "no_rank_task"}, **kw)


def test_a_generation_job_makes_k_candidates_and_a_rank_task_per_prompt(project, base,
                                                                         prompts):
    generation = _generation(project, base)
    assert jobs.job_run(job_id=generation.job_id, worker="w1")
    job = Job.objects.get(pk=generation.job_id)
    assert job.status == Job.Status.SUCCEEDED and job.progress == job.total == 6
    tasks = Task.objects.filter(project=project, kind="rank")
    assert tasks.count() == 6
    for task in tasks:
        texts = list(TaskCompletion.objects.filter(task=task)
                     .values_list("completion__text", flat=True))
        assert len(texts) == 4
    completion = Completion.objects.filter(generation_params__job=job.pk).first()
    assert completion.generation_params["model_version"] == base.pk
    assert completion.generation_params["temperature"] == 1.0


def test_generation_is_deterministic_for_a_seed(project, base, prompts):
    texts = []
    for _ in range(2):
        generation = _generation(project, base, create_tasks=False)
        jobs.job_run(job_id=generation.job_id, worker="w")
        texts.append([c.completion.text for c in GeneratedCompletion.objects.filter(
            job=generation).select_related("completion").order_by("pk")])
    assert texts[0] == texts[1] and len(texts[0]) == 24


def test_a_duplicated_message_runs_the_job_once(project, base, prompts):
    generation = _generation(project, base)
    assert jobs.job_run(job_id=generation.job_id, worker="w1")
    assert not jobs.job_run(job_id=generation.job_id, worker="w2")  # the same message again
    assert Completion.objects.filter(generation_params__job=generation.job_id).count() == 24
    assert Job.objects.get(pk=generation.job_id).attempts == 1


def test_a_rerun_after_a_dead_worker_skips_done_prompts(project, base, prompts, monkeypatch):
    from modelhub.services import generation as generation_service

    monkeypatch.setattr(generation_service, "CHUNK_PROMPTS", 2)
    generation = _generation(project, base)
    real = generation_service._write_chunk
    calls = []

    def dies_after_two_chunks(*args):
        calls.append(1)
        if len(calls) == 3:
            raise SystemExit("the worker died")  # not an Exception: nothing catches it
        return real(*args)

    monkeypatch.setattr(generation_service, "_write_chunk", dies_after_two_chunks)
    with pytest.raises(SystemExit):
        jobs.job_run(job_id=generation.job_id, worker="w1")
    job = Job.objects.get(pk=generation.job_id)
    assert job.status == Job.Status.RUNNING and job.progress == 4
    # The heartbeat stops; the reconciler hands the job back to the queue.
    counts = jobs.jobs_reconcile(now=timezone.now() + timedelta(hours=1))
    assert counts["requeued"] == 1
    monkeypatch.setattr(generation_service, "_write_chunk", real)
    assert jobs.job_run(job_id=generation.job_id, worker="w2")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 2
    per_prompt = [Completion.objects.filter(prompt=p, generation_params__job=job.pk).count()
                  for p in prompts]
    assert per_prompt == [4] * 6  # nothing generated twice
    assert Task.objects.filter(project=project, kind="rank").count() == 6


def test_the_reconciler_fails_a_job_at_its_attempt_cap(project, base, prompts):
    generation = _generation(project, base)
    Job.objects.filter(pk=generation.job_id).update(
        status=Job.Status.RUNNING, attempts=3, lease_owner="gone:1",
        heartbeat_at=timezone.now() - timedelta(hours=1))
    assert jobs.jobs_reconcile()["failed"] == 1
    job = Job.objects.get(pk=generation.job_id)
    assert job.status == Job.Status.FAILED and "3 attempts" in job.error


def test_a_worker_that_lost_its_lease_writes_nothing(project, base, prompts):
    generation = _generation(project, base)
    job = jobs.job_claim(job_id=generation.job_id, worker="w1")
    Job.objects.filter(pk=job.pk).update(lease_owner="w2")  # the reconciler gave it away
    context = jobs.JobContext(job, "w1")
    with pytest.raises(jobs.JobLost), context.fenced():
        Completion.objects.create(prompt=prompts[0], text="late")
    assert not Completion.objects.filter(text="late").exists()


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_check(project, base,
                                                                               prompts):
    queued = _generation(project, base)
    assert jobs.job_cancel(job=queued.job).status == Job.Status.CANCELLED
    assert not jobs.job_run(job_id=queued.job_id, worker="w")
    running = _generation(project, base)
    job = jobs.job_claim(job_id=running.job_id, worker="w")
    jobs.job_cancel(job=job)
    with pytest.raises(jobs.JobCancelled):
        jobs.JobContext(job, "w").progress(1)


def test_a_failing_handler_fails_the_job_with_its_error(project, base, prompts):
    generation = _generation(project, base)
    ModelVersion.objects.filter(pk=base.pk).update(artifact_path="/nonexistent/model")
    jobs.job_run(job_id=generation.job_id, worker="w")
    job = Job.objects.get(pk=generation.job_id)
    assert job.status == Job.Status.FAILED and job.error


def test_bad_generation_requests_are_refused(project, base, prompts):
    with pytest.raises(GenerationError, match="2 to 9"):
        _generation(project, base, samplers=[{"model": base.pk, "count": 1}])
    with pytest.raises(GenerationError, match="no model"):
        _generation(project, base, samplers=[{"model": 999, "count": 4}])
    with pytest.raises(ValueError):
        _generation(project, base, samplers=[{"model": base.pk, "count": 4, "top_p": 0}])


def test_an_evaluation_reports_the_win_rate_of_a_over_b(project, base, model_root, alice,
                                                         bob, dana):
    other = model_register(project=project, name="tiny-2", kind="sft", parent=base,
                           path=str(model_root / "tiny"))
    items = [{"prompt": f"Say something about {i}.", "user_id": f"t{i}"} for i in range(40)]
    prompts_import(project=project, records=records_from_items(items),
                   create_demonstrate_tasks=False)
    Prompt.objects.filter(project=project).update(split="test")
    project_update(project=project, overlap=1)
    evaluation = evaluation_create(project=project, model_a=other, model_b=base, prompts=5,
                                   sampling={"temperature": 1.0, "max_new_tokens": 6},
                                   created_by=alice)
    jobs.job_run(job_id=evaluation.generation.job_id, worker="w")
    links = list(evaluation.tasks.all())
    assert len(links) == 5
    won = {link.task_id: link.completion_a_id for link in links}
    lost = {link.task_id: link.completion_b_id for link in links}
    for i in range(5):  # A wins four, ties one
        a = assignment_claim_next(project=project, annotator=bob)
        tie = i == 4
        ranking = [{"completion": won[a.task_id], "rank": 1, "rating": 5},
                   {"completion": lost[a.task_id], "rank": 1 if tie else 2, "rating": 3}]
        annotation_submit(assignment=a, data={"ranking": ranking})
    result = win_rate(evaluation=evaluation)
    assert result["win_rate"] == pytest.approx(4.5 / 5)
    assert (result["wins"], result["ties"], result["losses"]) == (4, 1, 0)
    assert result["interval"][0] <= result["win_rate"] <= result["interval"][1]
    assert Annotation.objects.count() == 5


def test_control_characters_in_model_output_are_dropped():
    from modelhub.services.generation import _clean

    assert _clean("a\x00b\x1b[31m\tc\n") == "ab[31m\tc"


def test_cancel_stops_a_running_generation_between_chunks(project, base, prompts, monkeypatch):
    from modelhub.services import generation as generation_service

    monkeypatch.setattr(generation_service, "CHUNK_PROMPTS", 2)
    generation = _generation(project, base)
    real = generation_service._write_chunk

    def cancel_after_the_first_chunk(context, *args):
        result = real(context, *args)
        jobs.job_cancel(job=context.job)  # as a lead would, from the page or the API
        return result

    monkeypatch.setattr(generation_service, "_write_chunk", cancel_after_the_first_chunk)
    jobs.job_run(job_id=generation.job_id, worker="w")
    job = Job.objects.get(pk=generation.job_id)
    assert job.status == Job.Status.CANCELLED and job.finished_at is not None
    assert Task.objects.filter(project=project, kind="rank").count() == 2  # one chunk only
