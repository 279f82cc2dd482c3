import io
import json

import pytest
from rest_framework.test import APIClient

from labeling.models import Annotation, Membership, Task


def post_json(client, url, data=None, **headers):
    return client.post(url, data or {}, format="json", headers=headers)


def test_a_user_gets_a_token_and_uses_it(project, alice):
    client = APIClient()
    response = post_json(client, "/api/v1/auth/token/",
                         {"username": "alice", "password": "correct-horse-battery"})
    assert response.status_code == 200
    token = response.json()["token"]
    bad = post_json(client, "/api/v1/auth/token/", {"username": "alice", "password": "nope"})
    assert bad.status_code == 400
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/projects/").json()[0]["name"] == "Helpful assistant"
    assert APIClient().get("/api/v1/projects/").status_code in (401, 403)


def test_a_bad_or_inactive_token_is_refused(project, alice):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=alice).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert client.get("/api/v1/projects/").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/projects/").status_code == 200
    alice.is_active = False
    alice.save()
    assert client.get("/api/v1/projects/").status_code == 401


def test_projects_are_listed_only_for_members(project, api, bob, charlie):
    assert [p["id"] for p in api(bob).get("/api/v1/projects/").json()] == [project.pk]
    assert api(bob).get("/api/v1/projects/").json()[0]["role"] == "annotator"
    assert api(charlie).get("/api/v1/projects/").json() == []


def test_a_lead_creates_and_edits_a_project(project, api, alice, bob):
    created = post_json(api(alice), "/api/v1/projects/",
                        {"name": "Second", "k": 5, "allow_ties": False, "overlap": 2})
    assert created.status_code == 201
    body = created.json()
    assert {k: body[k] for k in ("name", "k", "allow_ties", "overlap")} == {
        "name": "Second", "k": 5, "allow_ties": False, "overlap": 2}
    assert post_json(api(bob), "/api/v1/projects/", {"name": "x"}).status_code == 403
    url = f"/api/v1/projects/{project.pk}/"
    patched = api(alice).patch(url, {"guidelines": "# Be kind", "k": 9}, format="json")
    assert patched.status_code == 200 and patched.json()["k"] == 9
    assert api(alice).patch(url, {"k": 12}, format="json").status_code == 400
    assert api(bob).patch(url, {"k": 3}, format="json").status_code == 403


def test_outsiders_get_404_everywhere(project, rank_tasks, api, bob, charlie):
    a = post_json(api(bob), f"/api/v1/projects/{project.pk}/tasks/next/").json()["assignment"]
    outsider = api(charlie)
    pid = project.pk
    assert outsider.get(f"/api/v1/projects/{pid}/").status_code == 404
    assert outsider.patch(f"/api/v1/projects/{pid}/", {}, format="json").status_code == 404
    assert post_json(outsider, f"/api/v1/projects/{pid}/members/",
                     {"username": "charlie", "role": "lead"}).status_code == 404
    assert post_json(outsider, f"/api/v1/projects/{pid}/prompts/import/",
                     {"items": [{"prompt": "x"}]}).status_code == 404
    assert post_json(outsider, f"/api/v1/projects/{pid}/tasks/next/").status_code == 404
    assert outsider.get(f"/api/v1/projects/{pid}/annotations/").status_code == 404
    assert post_json(outsider, f"/api/v1/assignments/{a}/submit/", {"text": "x"}).status_code \
        == 404
    assert post_json(outsider, f"/api/v1/assignments/{a}/skip/").status_code == 404
    task = rank_tasks.first().pk
    assert post_json(outsider, f"/api/v1/tasks/{task}/gold/", {"ranking": None}).status_code \
        == 404


def test_annotators_get_403_on_lead_and_engineer_endpoints(project, rank_tasks, api, bob):
    client, pid = api(bob), project.pk
    assert post_json(client, f"/api/v1/projects/{pid}/members/",
                     {"username": "bob", "role": "lead"}).status_code == 403
    assert post_json(client, f"/api/v1/projects/{pid}/prompts/import/",
                     {"items": [{"prompt": "x"}]}).status_code == 403
    assert client.get(f"/api/v1/projects/{pid}/annotations/").status_code == 403
    task = rank_tasks.first().pk
    assert post_json(client, f"/api/v1/tasks/{task}/gold/", {"ranking": None}).status_code == 403


def test_a_lead_adds_members_creating_accounts(project, api, alice):
    url = f"/api/v1/projects/{project.pk}/members/"
    created = post_json(
        api(alice), url,
        {"username": "frank", "password": "a-long-enough-pass", "role": "annotator"},
    )
    assert created.status_code == 201 and created.json()["created_account"] is True
    again = post_json(api(alice), url, {"username": "frank", "role": "engineer"})
    assert again.status_code == 200
    assert Membership.objects.get(user__username="frank").role == "engineer"
    missing = post_json(api(alice), url, {"username": "ghost", "role": "annotator"})
    assert missing.status_code == 400 and "password" in missing.json()
    weak = post_json(api(alice), url, {"username": "weak", "password": "123", "role": "lead"})
    assert weak.status_code == 400


def test_import_by_json_items_and_by_file(project, api, alice):
    url = f"/api/v1/projects/{project.pk}/prompts/import/"
    items = [{"prompt": "hello"}, {"prompt": "hello"}, {"messages": [
        {"role": "user", "content": "hi"}], "completions": [{"text": "a", "model": "m"},
                                                           {"text": "b", "model": "m"}]}]
    body = post_json(api(alice), url, {"items": items}).json()
    assert {k: body[k] for k in ("added", "duplicates", "capped", "tasks_created", "errors")} \
        == {"added": 2, "duplicates": 1, "capped": 0, "tasks_created": 2, "errors": []}
    upload = io.BytesIO(b'{"prompt": "from a file"}\n{"prompt": ""}\n')
    upload.name = "prompts.jsonl"
    bad = api(alice).post(url, {"file": upload}, format="multipart")
    assert bad.status_code == 400
    assert bad.json()["errors"] == [{"line": 2, "message": "'prompt' must be non-empty text"}]
    assert bad.json()["added"] == 0
    upload = io.BytesIO(b"prompt,category\nfrom csv,rewrite\n")
    upload.name = "prompts.csv"
    good = api(alice).post(url, {"file": upload}, format="multipart")
    assert good.status_code == 200 and good.json()["added"] == 1


def test_the_annotation_loop_through_the_api(project, rank_tasks, api, bob, erin):
    client = api(bob)
    url = f"/api/v1/projects/{project.pk}/tasks/next/"
    got = post_json(client, url, {"kind": "rank"})
    assert got.status_code == 200
    body = got.json()
    assert {"assignment", "task", "kind", "prompt", "completions", "expires_at"} <= set(body)
    assert body["kind"] == "rank" and len(body["completions"]) == 4
    ranking = [{"completion": c["id"], "rank": i + 1, "rating": 6, "flags": []}
               for i, c in enumerate(body["completions"])]
    submit = f"/api/v1/assignments/{body['assignment']}/submit/"
    first = post_json(client, submit, {"ranking": ranking, "comment": "fine"},
                      **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201 and first.json()["replayed"] is False
    replay = post_json(client, submit, {"ranking": ranking}, **{"Idempotency-Key": "k-1"})
    assert replay.status_code == 200
    assert replay.json() == {"annotation": first.json()["annotation"], "replayed": True}
    assert Annotation.objects.count() == 1
    listing = api(erin).get(f"/api/v1/projects/{project.pk}/annotations/?kind=rank")
    assert listing.status_code == 200
    row = listing.json()["results"][0]
    assert row["annotator"] == "bob" and row["comment"] == "fine"
    assert [e["completion"] for e in row["ranking"]] == row["display_order"]
    assert api(erin).get(f"/api/v1/projects/{project.pk}/annotations/?kind=bad").status_code \
        == 400


def test_a_bad_ranking_gets_400_with_messages(project, rank_tasks, api, bob):
    client = api(bob)
    body = post_json(client, f"/api/v1/projects/{project.pk}/tasks/next/").json()
    response = post_json(client, f"/api/v1/assignments/{body['assignment']}/submit/",
                         {"ranking": [{"completion": body["completions"][0]["id"], "rank": 1,
                                       "rating": 3}]})
    assert response.status_code == 400
    assert any("missing" in m for m in response.json()["ranking"])


def test_skip_and_204_when_the_queue_is_empty(project, api, bob):
    from labeling.services.importing import prompts_import, records_from_items
    from tests.conftest import rank_items

    prompts_import(project=project, records=records_from_items(rank_items(1)))
    client = api(bob)
    body = post_json(client, f"/api/v1/projects/{project.pk}/tasks/next/").json()
    skipped = post_json(client, f"/api/v1/assignments/{body['assignment']}/skip/",
                        {"reason": "unclear"})
    assert skipped.json() == {"state": "skipped"}
    assert post_json(client, f"/api/v1/projects/{project.pk}/tasks/next/").status_code == 204


def test_a_lead_marks_a_gold_task(project, rank_tasks, api, alice):
    task = rank_tasks.first()
    ids = list(task.task_completions.values_list("completion_id", flat=True))
    url = f"/api/v1/tasks/{task.pk}/gold/"
    ok = post_json(api(alice), url, {"ranking": {str(c): i + 1 for i, c in enumerate(ids)}})
    assert ok.status_code == 200 and Task.objects.get(pk=task.pk).is_gold
    bad = post_json(api(alice), url, {"ranking": {str(ids[0]): 1}})
    assert bad.status_code == 400


def test_the_openapi_schema_and_docs_are_served(db, client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/v1/projects/{project_id}/tasks/next/" in \
        schema.content
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.parametrize("user", ["bob", "erin"])
def test_paused_members_get_no_tasks(project, rank_tasks, api, user, request):
    Membership.objects.filter(user__username=user).update(is_active=False)
    response = post_json(api(request.getfixturevalue(user)),
                         f"/api/v1/projects/{project.pk}/tasks/next/")
    assert response.status_code == 403
    assert json.loads(response.content)["detail"]
