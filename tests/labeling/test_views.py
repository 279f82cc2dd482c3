"""The HTML pages: membership scoping, roles, the htmx task panel and the import page."""

import re

import pytest
from django.core.management import CommandError, call_command

from labeling.models import Annotation, Prompt


def pages(project, task_id):
    pid = project.pk
    return {
        "detail": f"/projects/{pid}/",
        "work": f"/projects/{pid}/work/",
        "settings": f"/projects/{pid}/settings/",
        "members": f"/projects/{pid}/members/",
        "import": f"/projects/{pid}/import/",
        "gold": f"/tasks/{task_id}/gold/",
    }


LEAD_ONLY = {"settings", "members", "import", "gold"}


def test_an_outsider_gets_404_on_every_project_page(project, rank_tasks, client, charlie):
    client.force_login(charlie)
    for name, url in pages(project, rank_tasks.first().pk).items():
        assert client.get(url).status_code == 404, name


@pytest.mark.parametrize("user", ["bob", "erin"])
def test_annotators_and_engineers_get_403_on_lead_pages(project, rank_tasks, client, user,
                                                        request):
    client.force_login(request.getfixturevalue(user))
    for name, url in pages(project, rank_tasks.first().pk).items():
        expected = 403 if name in LEAD_ONLY else 200
        assert client.get(url).status_code == expected, name


def test_the_lead_sees_every_page(project, rank_tasks, client, alice):
    client.force_login(alice)
    for name, url in pages(project, rank_tasks.first().pk).items():
        assert client.get(url).status_code == 200, name


def test_anonymous_users_are_sent_to_log_in(project, client):
    response = client.get(f"/projects/{project.pk}/work/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def _form_fields(html):
    ids = re.findall(r'name="rank_(\d+)"', html)
    assignment = re.search(r"/assignments/(\d+)/submit/", html).group(1)
    key = re.search(r'name="idempotency_key" value="([0-9a-f]+)"', html).group(1)
    return ids, assignment, key


def test_the_task_panel_swaps_in_the_next_task_for_htmx(project, rank_tasks, client, bob):
    client.force_login(bob)
    page = client.get(f"/projects/{project.pk}/work/?kind=rank").content.decode()
    assert "<html" in page
    ids, assignment, key = _form_fields(page)
    data = {"idempotency_key": key, **{f"rank_{c}": str(i + 1) for i, c in enumerate(ids)},
            **{f"rating_{c}": "4" for c in ids}, f"flags_{ids[0]}": "hallucination"}
    url = f"/assignments/{assignment}/submit/?kind=rank"
    fragment = client.post(url, data, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment and 'id="task-form"' in fragment
    assert _form_fields(fragment)[1] != assignment
    # The same form sent again (a double click) records nothing more.
    client.post(url, data, HTTP_HX_REQUEST="true")
    assert Annotation.objects.count() == 1
    assert Annotation.objects.get().ranking[0]["flags"] == ["hallucination"]


def test_a_full_page_submit_redirects_to_the_next_task(project, rank_tasks, client, bob):
    client.force_login(bob)
    page = client.get(f"/projects/{project.pk}/work/").content.decode()
    ids, assignment, key = _form_fields(page)
    data = {"idempotency_key": key, **{f"rank_{c}": "1" for c in ids},
            **{f"rating_{c}": "4" for c in ids}}
    response = client.post(f"/assignments/{assignment}/submit/", data)
    assert response.status_code == 302 and response["Location"].endswith("/work/")


def test_a_bad_submit_shows_the_errors_and_keeps_the_input(project, rank_tasks, client, bob):
    client.force_login(bob)
    ids, assignment, key = _form_fields(
        client.get(f"/projects/{project.pk}/work/").content.decode())
    data = {"idempotency_key": key, f"rank_{ids[0]}": "1", "comment": "<b>mine</b>"}
    html = client.post(f"/assignments/{assignment}/submit/", data).content.decode()
    assert "every response needs a rank" in html
    assert "&lt;b&gt;mine&lt;/b&gt;" in html and "<b>mine</b>" not in html
    assert Annotation.objects.count() == 0


def test_someone_elses_assignment_is_404(project, rank_tasks, client, bob, dana):
    client.force_login(bob)
    _, assignment, key = _form_fields(client.get(f"/projects/{project.pk}/work/").content.decode())
    client.force_login(dana)
    response = client.post(f"/assignments/{assignment}/submit/", {"idempotency_key": key})
    assert response.status_code == 404


def test_guidelines_markdown_is_rendered_without_scripts(project, client, bob):
    project.guidelines = "# Rules\n\n<script>alert(1)</script> [x](javascript:alert(1)) **ok**"
    project.save()
    client.force_login(bob)
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert "<h1>Rules</h1>" in html and "<strong>ok</strong>" in html
    assert "<script>alert" not in html and "javascript:" not in html


def test_the_import_command_reports_bad_lines_and_imports_nothing(project, tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "good"}\n{"prompt": 3}\n', encoding="utf-8")
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_prompts", str(path), project=project.pk)
    assert "line 2:" in capsys.readouterr().err
    assert Prompt.objects.count() == 0
    call_command("import_prompts", str(path), project=project.pk, skip_bad_lines=True)
    assert Prompt.objects.count() == 1
