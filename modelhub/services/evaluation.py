"""Human evaluation the InstructGPT way: A against B on test prompts, A's win rate.

An evaluation samples prompts from the test split, generates one response from each
model (a generation job with two samplers), and makes K=2 ranking tasks; each
annotator sees the two sides in an order shuffled for them. The win rate of A counts a
win as 1, a tie as 1/2 and a loss as 0, averaged per task over its annotators, then
over tasks, with a 95% percentile bootstrap interval over tasks.
"""

import random

from django.db import transaction

from labeling import agreement
from labeling.models import Annotation, Prompt, Split, Task
from modelhub.models import Evaluation, EvaluationTask, GenerationJob, ModelVersion
from modelhub.services.generation import GenerationError, generation_job_create

_WINS = agreement.RatioStatistic(lambda parts: parts)


def evaluation_create(*, project, model_a: ModelVersion, model_b: ModelVersion,
                      prompts: int = 100, sampling: dict | None = None, seed: int = 0,
                      created_by=None) -> Evaluation:
    """Queue the generation for an evaluation of A against B on sampled test prompts."""
    if model_a.pk == model_b.pk:
        raise GenerationError("compare two different models")
    if model_a.project_id != project.pk or model_b.project_id != project.pk:
        raise GenerationError("both models must belong to this project")
    pool = list(Prompt.objects.filter(project=project, split=Split.TEST)
                .order_by("pk").values_list("pk", flat=True))
    if not pool:
        raise GenerationError("the project has no prompts in its test split")
    chosen = sorted(random.Random(seed).sample(pool, min(prompts, len(pool))))
    sampling = sampling or {}
    samplers = [{"model": m.pk, "count": 1, **sampling} for m in (model_a, model_b)]
    with transaction.atomic():
        generation = generation_job_create(
            project=project, samplers=samplers, created_by=created_by,
            prompt_filter={"selection": GenerationJob.Selection.IDS, "ids": chosen})
        return Evaluation.objects.create(
            project=project, model_a=model_a, model_b=model_b, generation=generation,
            prompts=len(chosen), created_by=created_by)


def win_rate(*, evaluation: Evaluation) -> dict:
    """Return A's win rate over the annotated tasks, with its interval and the counts."""
    pairs = {row.task_id: (row.completion_a_id, row.completion_b_id)
             for row in EvaluationTask.objects.filter(evaluation=evaluation)}
    per_task: dict[int, list[float]] = {}
    wins = ties = losses = 0
    for task_id, ranking in Annotation.objects.filter(
            task_id__in=list(pairs), kind=Task.Kind.RANK).values_list("task_id", "ranking"):
        ranks = agreement.ranks_of(ranking or [])
        a, b = pairs[task_id]
        if a not in ranks or b not in ranks:
            continue
        score = 1.0 if ranks[a] < ranks[b] else 0.5 if ranks[a] == ranks[b] else 0.0
        wins += score == 1.0
        ties += score == 0.5
        losses += score == 0.0
        per_task.setdefault(task_id, []).append(score)
    parts = [(sum(scores) / len(scores), 1) for _, scores in sorted(per_task.items())]
    interval = agreement.bootstrap_ci(parts, _WINS) if parts else None
    return {
        "win_rate": _WINS(parts) if parts else None,
        "interval": list(interval) if interval else None,
        "tasks": len(pairs), "annotated_tasks": len(parts),
        "wins": wins, "ties": ties, "losses": losses,
    }
