from collections import Counter

from django.contrib.auth import authenticate
from django.core.management import call_command

from labeling.models import Annotation, Category, Membership, Project, Prompt, Task


def test_the_demo_project_is_loaded_with_its_accounts(db, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_PASSWORD", "demo-password-1")
    call_command("load_demo")
    call_command("load_demo")  # idempotent
    assert "demo-password-1" in capsys.readouterr().out
    project = Project.objects.get()
    roles = dict(Membership.objects.values_list("user__username", "role"))
    assert roles == {"lead": "lead", "annotator1": "annotator", "annotator2": "annotator",
                     "engineer": "engineer"}
    assert authenticate(username="annotator1", password="demo-password-1")
    prompts = Prompt.objects.filter(project=project)
    assert prompts.count() >= 60
    assert set(prompts.values_list("category", flat=True)) == set(Category.values)
    languages = Counter(p.metadata["language"] for p in prompts)
    assert languages["en"] > 0 and languages["zh-Hans"] > 0
    rank_tasks = Task.objects.filter(project=project, kind="rank")
    assert rank_tasks.count() >= 20
    assert all(t.task_completions.count() == 4 for t in rank_tasks)
    assert Annotation.objects.filter(kind="demonstrate").count() >= 10
    assert Task.objects.filter(kind="write_prompt").exists()
