"""Candidate generation jobs: K responses per prompt from registered models -> rank tasks.

A job resolves its prompts once (kept on the row, so a re-run works on the same list),
then works through them in chunks: every sampler (model + settings) writes its share of
the K candidates with batched generation; candidates identical to another of the same
prompt are resampled; each chunk's completions and rank tasks are written in one
transaction fenced by the job's lease. A re-run after a dead worker skips prompts that
already have this job's completions, so nothing is generated twice.
"""

import re
from dataclasses import replace

from django.db import transaction
from django.db.models import Exists, F, OuterRef

from labeling.models import Completion, Prompt, Task, TaskCompletion
from labeling.services.importing import task_build
from modelhub.ml.sampling import SamplingSettings
from modelhub.models import (
    Evaluation,
    EvaluationTask,
    GeneratedCompletion,
    GenerationJob,
    Job,
    ModelVersion,
)
from modelhub.services.jobs import JobContext, job_create, job_handler

CHUNK_PROMPTS = 16  # prompts per fenced write (and per progress step)
# Control characters a model may emit (NUL cannot even be stored in PostgreSQL text).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_PROMPTS = 10_000


class GenerationError(ValueError):
    """A generation job that cannot be created as asked."""


def _sampler(project, raw: dict) -> dict:
    if not isinstance(raw, dict):
        raise GenerationError("each sampler must be an object")
    model = ModelVersion.objects.filter(project=project, pk=raw.get("model")).first()
    if model is None:
        raise GenerationError(f"no model {raw.get('model')!r} in this project")
    if model.kind == ModelVersion.Kind.REWARD:
        raise GenerationError(f"{model.name} is a reward model: it cannot generate")
    count = raw.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise GenerationError("count must be a whole number >= 1")
    settings = SamplingSettings.from_dict(
        {key: raw[key] for key in ("temperature", "top_p", "max_new_tokens", "seed")
         if key in raw})
    return {"model": model.pk, "count": count} | settings.to_dict()


def prompts_select(*, project, prompt_filter: dict) -> list[int]:
    """Return the ids of the prompts a filter picks, in id order (at most MAX_PROMPTS)."""
    prompts = Prompt.objects.filter(project=project)
    selection = prompt_filter.get("selection", GenerationJob.Selection.NO_RANK_TASK)
    if selection == GenerationJob.Selection.NO_RANK_TASK:
        prompts = prompts.exclude(Exists(
            Task.objects.filter(prompt=OuterRef("pk"), kind=Task.Kind.RANK)))
    elif selection == GenerationJob.Selection.SPLIT:
        prompts = prompts.filter(split=prompt_filter.get("split", ""))
    elif selection == GenerationJob.Selection.CATEGORY:
        prompts = prompts.filter(category=prompt_filter.get("category", ""))
    elif selection == GenerationJob.Selection.IDS:
        ids = prompt_filter.get("ids") or []
        if not all(isinstance(i, int) for i in ids):
            raise GenerationError("ids must be a list of prompt ids")
        prompts = prompts.filter(pk__in=ids)
    else:
        raise GenerationError(f"unknown selection {selection!r}")
    limit = min(int(prompt_filter.get("limit") or MAX_PROMPTS), MAX_PROMPTS)
    return list(prompts.order_by("pk").values_list("pk", flat=True)[:limit])


def generation_job_create(*, project, samplers: list, prompt_filter: dict, created_by=None,
                          create_tasks: bool = True, k: int | None = None) -> GenerationJob:
    """Validate and queue a generation job; K is the sum of the samplers' counts."""
    if not samplers:
        raise GenerationError("give at least one model to sample from")
    checked = [_sampler(project, raw) for raw in samplers]
    total_k = sum(s["count"] for s in checked)
    if k is not None and k != total_k:
        raise GenerationError(f"the samplers' counts add up to {total_k}, not K={k}")
    if create_tasks and not 2 <= total_k <= 9:
        raise GenerationError(f"a ranking task needs 2 to 9 responses, not {total_k}")
    prompt_ids = prompts_select(project=project, prompt_filter=prompt_filter)
    if not prompt_ids:
        raise GenerationError("no prompt matches this selection")
    with transaction.atomic():
        job = job_create(project=project, kind=Job.Kind.GENERATION, queue="gpu",
                         created_by=created_by, total=len(prompt_ids))
        generation = GenerationJob.objects.create(
            job=job, project=project, prompt_filter=prompt_filter, samplers=checked,
            k=total_k, create_tasks=create_tasks, prompt_ids=prompt_ids,
        )
    return generation


def _clean(text: str) -> str:
    """Return model output without control characters (tabs and newlines stay)."""
    return _CONTROL.sub("", text).strip()


def _prompt_input(prompt: Prompt):
    return prompt.messages if prompt.messages else prompt.text


def _candidates(backends: dict, samplers: list, inputs: list, offset: int):
    """Return per prompt [(text, sampler index)] for all samplers, and the not-distinct count.

    ``offset`` (the chunk's first prompt position in the job) moves each chunk's seed, so
    chunks do not repeat each other's random streams.
    """
    # torch and transformers load in the worker only, not in every web process.
    from modelhub.ml.generation import generate_distinct
    from modelhub.ml.generation import normalise as normalised

    per_prompt: list[list[tuple[str, int]]] = [[] for _ in inputs]
    for s_index, sampler in enumerate(samplers):
        settings = SamplingSettings.from_dict(
            {k: sampler[k] for k in ("temperature", "top_p", "max_new_tokens", "seed")})
        settings = replace(settings, seed=settings.seed + offset)
        result = generate_distinct(backends[sampler["model"]], inputs, settings,
                                   sampler["count"])
        for i, texts in enumerate(result.candidates):
            per_prompt[i] += [(_clean(text), s_index) for text in texts]
    # Two samplers may still agree with each other: resample the later copy, up to three
    # times; a prompt counts as not distinct if repeats remain after the last try.
    leftover = 0
    for i, candidates in enumerate(per_prompt):
        for attempt in range(1, 5):
            seen, repeats = set(), []
            for j, (text, _) in enumerate(candidates):
                key = normalised(text)
                if not key or key in seen:
                    repeats.append(j)
                seen.add(key)
            if not repeats:
                break
            if attempt == 4:
                leftover += 1
                break
            for j in repeats:
                s_index = candidates[j][1]
                sampler = samplers[s_index]
                settings = SamplingSettings.from_dict(
                    {k: sampler[k] for k in ("temperature", "top_p", "max_new_tokens",
                                             "seed")})
                settings = replace(settings, seed=settings.seed + offset + 104_729 * attempt + j)
                if settings.greedy:
                    continue
                (text,), = backends[sampler["model"]].generate([inputs[i]], settings, n=1)
                candidates[j] = (_clean(text), s_index)
    return per_prompt, leftover


def _write_chunk(context: JobContext, generation: GenerationJob, prompts: list[Prompt],
                 per_prompt: list, models: dict) -> tuple[int, int]:
    """Store one chunk's completions (and rank tasks); return (completions, tasks)."""
    samplers = generation.samplers
    project = generation.project
    with context.fenced():
        completions, owners = [], []
        for prompt, candidates in zip(prompts, per_prompt, strict=True):
            for text, s_index in candidates:
                sampler = samplers[s_index]
                model = models[sampler["model"]]
                completions.append(Completion(
                    prompt=prompt, text=text, source=Completion.Source.MODEL,
                    generator=f"{model.name}#{model.pk}",
                    generation_params={"model_version": model.pk, "job": generation.job_id,
                                       **{k: v for k, v in sampler.items() if k != "count"}},
                ))
                owners.append((prompt.pk, model.pk))
        Completion.objects.bulk_create(completions)
        GeneratedCompletion.objects.bulk_create([
            GeneratedCompletion(job=generation, completion=c, prompt_id=p, model_id=m)
            for c, (p, m) in zip(completions, owners, strict=True)])
        tasks = []
        if generation.create_tasks:
            groups = {}
            for completion in completions:
                groups.setdefault(completion.prompt_id, []).append(completion)
            tasks = Task.objects.bulk_create([
                task_build(project=project, kind=Task.Kind.RANK, prompt=prompt)
                for prompt in prompts if len(groups.get(prompt.pk, [])) == generation.k])
            TaskCompletion.objects.bulk_create([
                TaskCompletion(task=task, completion=c, position=position)
                for task in tasks for position, c in enumerate(groups[task.prompt_id])])
            for task in tasks:
                task.new_completions = groups[task.prompt_id]
            evaluation_tasks_link(generation=generation, tasks=tasks)
        GenerationJob.objects.filter(pk=generation.pk).update(
            prompts_done=F("prompts_done") + len(prompts),
            completions_created=F("completions_created") + len(completions),
            tasks_created=F("tasks_created") + len(tasks))
    return len(completions), len(tasks)


def evaluation_tasks_link(*, generation: GenerationJob, tasks: list[Task]) -> None:
    """Record which response of each new K=2 task is A's and which is B's."""
    evaluation = Evaluation.objects.filter(generation=generation).first()
    if evaluation is None:
        return
    rows = []
    for task in tasks:
        by_model = {c.generation_params.get("model_version"): c for c in task.new_completions}
        rows.append(EvaluationTask(
            evaluation=evaluation, task=task, completion_a=by_model[evaluation.model_a_id],
            completion_b=by_model[evaluation.model_b_id]))
    EvaluationTask.objects.bulk_create(rows)


@job_handler(Job.Kind.GENERATION)
def generation_run(context: JobContext) -> None:
    """Generate the job's candidates, chunk by chunk, skipping prompts already done."""
    generation = GenerationJob.objects.select_related("project").get(job=context.job)
    done = set(GeneratedCompletion.objects.filter(job=generation)
               .values_list("prompt_id", flat=True).distinct())
    todo = [pid for pid in generation.prompt_ids if pid not in done]
    total = len(generation.prompt_ids)
    if done:
        context.log(f"resuming: {len(done)} of {total} prompts already done")
    from modelhub.ml.generation import TransformersBackend  # torch: in the worker only

    models = ModelVersion.objects.in_bulk({s["model"] for s in generation.samplers})
    backends = {pk: TransformersBackend(model.artifact_path) for pk, model in models.items()}
    context.progress(len(done), total)
    position = {pid: i for i, pid in enumerate(generation.prompt_ids)}
    for start in range(0, len(todo), CHUNK_PROMPTS):
        chunk = todo[start:start + CHUNK_PROMPTS]
        found = Prompt.objects.in_bulk(chunk)
        prompts = [found[pid] for pid in chunk if pid in found]  # deleted meanwhile: skip
        if prompts:
            per_prompt, leftover = _candidates(
                backends, generation.samplers, [_prompt_input(p) for p in prompts],
                offset=position[prompts[0].pk])
            _write_chunk(context, generation, prompts, per_prompt, models)
            if leftover:
                GenerationJob.objects.filter(pk=generation.pk).update(
                    not_distinct=F("not_distinct") + leftover)
        context.progress(len(done) + start + len(chunk))
    generation.refresh_from_db()
    context.log(f"done: {generation.completions_created} completions, "
                f"{generation.tasks_created} rank tasks")
