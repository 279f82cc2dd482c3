"""A browser import runs on a real Celery worker process through a real Redis broker."""

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling.models import Prompt, PromptImport


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_browser_import_runs_on_the_worker_through_redis(worker, project, client, alice):
    client.force_login(alice)
    upload = SimpleUploadedFile(
        "prompts.jsonl",
        b'{"prompt": "Imported by the worker", "category": "open_qa"}\n'
        b'{"prompt": "And a second one", "user_id": "u1"}\n',
    )
    response = client.post(f"/projects/{project.pk}/import/",
                           {"file": upload, "create_demonstrate_tasks": "on"})
    assert response.status_code == 302
    prompt_import = PromptImport.objects.get()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        prompt_import.refresh_from_db()
        if prompt_import.status != "pending" or worker.poll() is not None:
            break
        time.sleep(0.2)
    assert worker.poll() is None, "the worker died"
    assert prompt_import.status == "done", prompt_import.error
    assert prompt_import.report["added"] == 2 and prompt_import.report["tasks_created"] == 2
    assert Prompt.objects.filter(project=project).count() == 2
    worker.terminate()
    output, _ = worker.communicate(timeout=20)
    assert "labeling.prompt_import" in output and "succeeded" in output
