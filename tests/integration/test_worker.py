"""A browser import runs on a real Celery worker process through a real Redis broker."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from config.celery import app as celery_app
from labeling.models import Prompt, PromptImport
from tests.services import redis_reachable, redis_url, unavailable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_broker():
    if not redis_reachable():
        unavailable(f"Redis at {redis_url()}")
    import redis

    client = redis.Redis.from_url(redis_url())
    client.flushdb()
    yield redis_url()
    client.flushdb()


@pytest.fixture
def worker(postgres, redis_broker, settings, tmp_path):
    """Start `celery worker` on the test database and Redis; point this process at it too."""
    settings.MEDIA_ROOT = str(tmp_path)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": redis_broker,
        "DJANGO_MEDIA_ROOT": str(tmp_path),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default",
         "--pool", "solo", "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    previous = (celery_app.conf.task_always_eager, celery_app.conf.broker_url)
    celery_app.conf.update(task_always_eager=False, broker_url=redis_broker)
    assert not celery_app.conf.task_always_eager
    try:
        yield process
    finally:
        celery_app.conf.update(task_always_eager=previous[0], broker_url=previous[1])
        if process.poll() is None:
            process.kill()
            process.communicate()


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
