"""A real Celery worker process on the test database and a real Redis broker."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from config.celery import app as celery_app
from tests.services import redis_reachable, redis_url, unavailable

ROOT = Path(__file__).resolve().parents[2]


def _forget_connections() -> None:
    """Drop the app's broker connections, so the next message uses the broker set now."""
    # Dropped, not closed: kombu's shared producer pools may still hold them.
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


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
def start_worker(postgres, redis_broker, settings, tmp_path):
    """Return a function that starts `celery worker -Q <queues>` on the test database.

    This process sends its messages through the same Redis while the fixture lasts;
    every worker started is killed at the end.
    """
    settings.MEDIA_ROOT = str(tmp_path)
    db = connection.settings_dict
    fixed = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": redis_broker,
        "DJANGO_MEDIA_ROOT": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "LAOSHI_JOB_HEARTBEAT_SECONDS": "1",
    }
    processes = []

    def start(queues: str = "default", name: str = "w1") -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues,
             "--pool", "solo", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
             "--hostname", f"{name}@%h"],
            # The environment as it is when the worker starts (a test may have set more).
            cwd=ROOT, env={**os.environ, **fixed}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        processes.append(process)
        return process

    previous = (celery_app.conf.task_always_eager, celery_app.conf.broker_url)
    celery_app.conf.update(task_always_eager=False, broker_url=redis_broker)
    _forget_connections()  # an earlier test may have sent through the memory broker
    assert not celery_app.conf.task_always_eager
    try:
        yield start
    finally:
        celery_app.conf.update(task_always_eager=previous[0], broker_url=previous[1])
        _forget_connections()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture
def worker(start_worker):
    """One worker on the default queue."""
    return start_worker("default")
