"""Many annotators claiming and submitting at once, on real PostgreSQL row locks."""

import threading
from collections import Counter

import pytest
from django.db import connection

from labeling.models import Annotation, Task
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import membership_add, project_update
from labeling.services.submission import annotation_submit
from tests.conftest import rank_items

WORKERS = 16
TASKS = 2000


def _work(project, annotator, errors, done):
    try:
        while (assignment := assignment_claim_next(project=project, annotator=annotator)):
            ranking = [
                {"completion": cid, "rank": i + 1, "rating": 4}
                for i, cid in enumerate(assignment.display_order)
            ]
            annotation_submit(assignment=assignment, data={"ranking": ranking},
                              idempotency_key=f"{annotator.pk}-{assignment.pk}")
            done.append(assignment.task_id)
    except Exception as exc:  # reported by the test thread
        errors.append(repr(exc))
    finally:
        connection.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sixteen_workers_fill_every_task_exactly_to_its_overlap(postgres, project):
    project_update(project=project, overlap=2, per_user_cap=TASKS)
    report = prompts_import(project=project, records=records_from_items(rank_items(TASKS)))
    assert report.tasks_created == TASKS
    annotators = [
        membership_add(project=project, username=f"worker{i}", role="annotator",
                       password="correct-horse-battery")[0].user
        for i in range(WORKERS)
    ]
    errors: list[str] = []
    done: list[int] = []
    threads = [
        threading.Thread(target=_work, args=(project, annotator, errors, done))
        for annotator in annotators
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors
    assert len(done) == 2 * TASKS
    per_task = Counter(Annotation.objects.values_list("task_id", flat=True))
    assert len(per_task) == TASKS and set(per_task.values()) == {2}
    pairs = Counter(Annotation.objects.values_list("task_id", "annotator_id"))
    assert max(pairs.values()) == 1
    assert not Task.objects.exclude(assigned_count=2).exists()
    assert not Task.objects.exclude(submitted_count=2, status="complete").exists()
    # Work was spread: every worker annotated something.
    assert len(Counter(Annotation.objects.values_list("annotator_id", flat=True))) == WORKERS
