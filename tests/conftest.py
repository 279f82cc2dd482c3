"""Shared fixtures: the personas (alice the lead, bob and dana annotators, erin the
engineer, charlie the outsider), a project, API clients and service switches."""

import pytest
from django.db import connection
from rest_framework.test import APIClient

from labeling.models import Role
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import membership_add, project_create
from tests.factories import UserFactory
from tests.services import unavailable

# The tiny model and one torch thread per test, for the folders that use models.
pytest_plugins = ["tests.ml"]

PASSWORD = "correct-horse-battery"


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def dana(db):
    return UserFactory(username="dana")


@pytest.fixture
def erin(db):
    return UserFactory(username="erin")


@pytest.fixture
def charlie(db):
    return UserFactory(username="charlie")


@pytest.fixture
def project(alice, bob, dana, erin, charlie):
    project = project_create(creator=alice, name="Helpful assistant", gold_rate=0.0)
    membership_add(project=project, username="bob", role=Role.ANNOTATOR)
    membership_add(project=project, username="dana", role=Role.ANNOTATOR)
    membership_add(project=project, username="erin", role=Role.ENGINEER)
    return project


def rank_items(n: int, k: int = 4, prefix: str = "Prompt") -> list[dict]:
    return [
        {
            "prompt": f"{prefix} {i}: explain item {i}",
            "category": "open_qa",
            "user_id": f"user-{i % 7}",
            "completions": [{"text": f"answer {j} to {i}", "model": "m"} for j in range(k)],
        }
        for i in range(n)
    ]


@pytest.fixture
def rank_tasks(project):
    """Eight rank tasks with four completions each."""
    report = prompts_import(project=project, records=records_from_items(rank_items(8)))
    assert report.imported and report.tasks_created == 8
    return project.tasks.all()


def api_client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def api():
    return api_client_for


@pytest.fixture
def postgres(db):
    """Require the test database to be PostgreSQL."""
    if connection.vendor != "postgresql":
        unavailable("PostgreSQL (set DATABASE_URL=postgres://...)")
    return connection


@pytest.fixture
def run_roots(settings, tmp_path, monkeypatch):
    """Give the test, and the processes it starts, model and snapshot roots of its own."""
    monkeypatch.setenv("LAOSHI_MODEL_ROOT", str(tmp_path / "models"))
    monkeypatch.setenv("LAOSHI_SNAPSHOT_ROOT", str(tmp_path / "snapshots"))
    settings.MODEL_ROOT = tmp_path / "models"
    settings.MODEL_REGISTRY_ROOTS = [tmp_path / "models"]
    settings.SNAPSHOT_ROOT = tmp_path / "snapshots"
    return tmp_path


@pytest.fixture
def child_database(postgres, monkeypatch):
    """Point the processes the test starts (trainers, workers) at the test database."""
    db = connection.settings_dict
    monkeypatch.setenv("DATABASE_URL",
                       f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "config.settings.test")
    return connection


@pytest.fixture
def gold_task(project, rank_tasks):
    """The first rank task as gold (expected ranking: stored order), served every time."""
    from labeling.services.project import task_set_gold

    gold = rank_tasks.first()
    ids = list(gold.task_completions.values_list("completion_id", flat=True))
    task_set_gold(task=gold, ranking={cid: i + 1 for i, cid in enumerate(ids)})
    project.gold_rate = 1.0
    project.save()
    gold.expected_ids = ids
    return gold
