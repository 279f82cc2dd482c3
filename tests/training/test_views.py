"""The dataset pages: snapshot list and form, build progress, results and downloads."""

import json
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from labeling.models import Membership, Prompt
from labeling.services.assignment import assignment_claim_next
from labeling.services.submission import annotation_submit
from modelhub.models import Job
from modelhub.services.jobs import job_run
from tests.pages import assert_data_roles_only
from training.models import DatasetSnapshot
from training.services.snapshots import snapshot_create

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
POLLING = 'hx-trigger="every 2s"'


@pytest.fixture(autouse=True)
def snapshot_root(settings, tmp_path):
    settings.SNAPSHOT_ROOT = tmp_path / "snapshots"
    return settings.SNAPSHOT_ROOT


@pytest.fixture
def train_tasks(project, rank_tasks):
    """The eight rank tasks, every prompt in the train split."""
    Prompt.objects.filter(project=project).update(split="train")
    return rank_tasks


def _rank(project, user, flags=None):
    """Claim the user's next task and rank its responses in id order (4 responses: 6 pairs)."""
    assignment = assignment_claim_next(project=project, annotator=user)
    ranking = [{"completion": cid, "rank": i + 1, "rating": 7 - i, "flags": flags or []}
               for i, cid in enumerate(sorted(assignment.display_order))]
    annotation_submit(assignment=assignment, data={"ranking": ranking})


def _built(project, name="pairs", kind="preference_pairs", **kw):
    snapshot = snapshot_create(project=project, name=name, kind=kind, **kw)
    assert job_run(job_id=snapshot.job_id, worker="w")
    snapshot.refresh_from_db()
    assert snapshot.is_built
    return snapshot


def snapshot_form(**fields) -> dict:
    """Return the POST data of the snapshot form, every filter empty."""
    data = {"name": "", "kind": "preference_pairs", "since": "", "until": "",
            "min_agreement": "", "merge": "per_annotator", "pair_policy": "all",
            "license": "other"}
    return data | fields


def _download(response) -> bytes:
    return b"".join(response.streaming_content)


def test_every_page_and_download_refuses_outsiders_and_annotators(
        project, train_tasks, client, alice, bob, erin, charlie):
    _rank(project, bob)
    snapshot = _built(project)
    pages = [f"/projects/{project.pk}/datasets/", f"/datasets/{snapshot.pk}/"]
    downloads = [f"/datasets/{snapshot.pk}/download/train.jsonl",
                 f"/datasets/{snapshot.pk}/download/card.md"]
    assert_data_roles_only(client, outsider=charlie, annotator=bob, members=(alice, erin),
                           pages=pages, downloads=downloads,
                           posts=[(pages[0], snapshot_form(name="sneaky"))])
    assert DatasetSnapshot.objects.filter(project=project).count() == 1


def test_a_missing_snapshot_is_not_found(project, client, alice):
    client.force_login(alice)
    assert client.get("/datasets/999999/").status_code == 404
    assert client.get("/datasets/999999/download/train.jsonl").status_code == 404


def test_the_project_page_links_leads_and_engineers_to_the_datasets(project, client, alice,
                                                                      erin, bob):
    link = f"/projects/{project.pk}/datasets/"
    for user in (alice, erin):
        client.force_login(user)
        assert link in client.get(f"/projects/{project.pk}/").content.decode()
    client.force_login(bob)
    assert link not in client.get(f"/projects/{project.pk}/").content.decode()


def test_an_engineer_builds_a_snapshot_from_the_form_and_downloads_it(
        project, train_tasks, client, bob, erin):
    _rank(project, bob)
    _rank(project, bob)
    client.force_login(erin)
    response = client.post(f"/projects/{project.pk}/datasets/",
                           snapshot_form(name="rm pairs", splits=["train"], parquet="on"))
    snapshot = DatasetSnapshot.objects.get(project=project)
    url = f"/datasets/{snapshot.pk}/"
    assert response.status_code == 302 and response["Location"] == url
    assert snapshot.kind == "preference_pairs" and snapshot.filters == {"splits": ["train"]}
    assert snapshot.parquet and snapshot.created_by == erin and snapshot.job.created_by == erin

    page = client.get(url).content.decode()
    assert "Queued" in page and "<progress" in page and POLLING in page
    assert f"/jobs/{snapshot.job_id}/cancel/" in page and "rm pairs" in page
    assert "/download/" not in page
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    body = fragment.content.decode()
    assert "<html" not in body and 'id="snapshot-live"' in body and POLLING in body
    assert "HX-Request" in fragment["Vary"]
    listing = client.get(f"/projects/{project.pk}/datasets/").content.decode()
    assert f'id="snapshot-{snapshot.pk}"' in listing and POLLING in listing

    assert job_run(job_id=snapshot.job_id, worker="w")

    snapshot.refresh_from_db()
    assert snapshot.row_counts == {"train": 12} and snapshot.tasks == 2
    page = client.get(url).content.decode()
    assert "Succeeded" in page and 'value="100"' in page and POLLING not in page
    assert f"/jobs/{snapshot.job_id}/cancel/" not in page
    assert snapshot.content_hash in page
    assert '<tr id="split-train"><td>train</td><td>12</td>' in page
    assert "12 rows from 2 tasks." in page
    categories = page.split('id="snapshot-categories"')[1].split("</section>")[0]
    assert "Open QA" in categories and "<td>12</td>" in categories
    for link in ("train.jsonl", "train.parquet", "card.md"):
        assert f'href="/datasets/{snapshot.pk}/download/{link}"' in page
    assert "first built snapshot of its kind" in page
    fragment = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in fragment and "Succeeded" in fragment
    rows = client.get(f"/projects/{project.pk}/datasets/",
                      HTTP_HX_REQUEST="true").content.decode()
    assert 'id="snapshot-rows"' in rows and "hx-trigger" not in rows and "<html" not in rows
    assert "train 12" in rows and snapshot.content_hash[:12] in rows

    response = client.get(f"/datasets/{snapshot.pk}/download/train.jsonl")
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    assert f"snapshot-{snapshot.pk}-train.jsonl" in response["Content-Disposition"]
    lines = [json.loads(line) for line in _download(response).decode().splitlines()]
    assert len(lines) == 12
    assert all({"prompt", "chosen", "rejected"} <= set(row) for row in lines)
    parquet = _download(client.get(f"/datasets/{snapshot.pk}/download/train.parquet"))
    assert parquet[:4] == b"PAR1"
    card = client.get(f"/datasets/{snapshot.pk}/download/card.md")
    assert card["Content-Type"].startswith("text/markdown")
    assert snapshot.content_hash in _download(card).decode()


def test_a_prompt_pool_snapshot_lists_every_prompt(project, train_tasks, client, alice):
    client.force_login(alice)
    client.post(f"/projects/{project.pk}/datasets/", snapshot_form(kind="prompts"))
    snapshot = DatasetSnapshot.objects.get(project=project)
    assert snapshot.name.startswith("prompts ")  # the service names an unnamed snapshot
    assert job_run(job_id=snapshot.job_id, worker="w")
    rows = _download(client.get(f"/datasets/{snapshot.pk}/download/train.jsonl"))
    assert len(rows.decode().splitlines()) == 8


def test_the_form_keeps_every_filter_and_the_page_says_it_in_words(
        project, train_tasks, client, alice, bob, dana):
    Membership.objects.filter(project=project, user=dana).update(is_active=False)
    client.force_login(alice)
    page = client.get(f"/projects/{project.pk}/datasets/").content.decode()
    assert f'<option value="{bob.pk}">bob</option>' in page
    assert f'<option value="{dana.pk}">dana (paused)</option>' in page
    assert "Contains personal information (PII)" in page
    pii = re.search(r'<input[^>]*value="contains_pii"[^>]*>', page).group(0)
    assert "checked" not in pii
    response = client.post(f"/projects/{project.pk}/datasets/", snapshot_form(
        name="careful", kind="rankings", categories=["open_qa", "chat"], since="2026-01-01",
        until="2026-12-31", min_agreement="0.5", exclude_flags=["contains_pii"],
        accepted_only="on", exclude_paused="on", exclude_annotators=[str(bob.pk)],
        merge="consensus", pair_policy="adjacent", margin="on", license="cc-by-4.0"))
    assert response.status_code == 302
    snapshot = DatasetSnapshot.objects.get(project=project)
    assert snapshot.filters == {
        "categories": ["chat", "open_qa"], "since": "2026-01-01", "until": "2026-12-31",
        "min_agreement": 0.5, "exclude_flags": ["contains_pii"], "accepted_only": True,
        "exclude_paused": True, "exclude_annotators": [bob.pk]}
    assert (snapshot.merge, snapshot.pair_policy, snapshot.margin, snapshot.license) == (
        "consensus", "adjacent", True, "cc-by-4.0")
    page = client.get(snapshot.get_absolute_url()).content.decode()
    words = page.split('id="snapshot-filter"')[1].split("</section>")[0]
    for text in ("every split", "Chat, Open QA", "from 2026-01-01 to 2026-12-31",
                 "at least 0.5", "Contains personal information (PII)", "bob",
                 "paused annotators", "cc-by-4.0"):
        assert text in words, text


def test_filter_errors_show_next_to_the_form(project, train_tasks, client, erin, charlie):
    client.force_login(erin)
    url = f"/projects/{project.pk}/datasets/"
    high = client.post(url, snapshot_form(min_agreement="2"))
    assert high.status_code == 200
    assert "min_agreement must be a number from 0 to 1" in high.content.decode()
    backwards = client.post(url, snapshot_form(since="2026-02-01", until="2026-01-01"))
    assert "Comes before the first day." in backwards.content.decode()
    bad = client.post(url, snapshot_form(kind="everything", splits=["holdout"],
                                         exclude_annotators=[str(charlie.pk)])).content.decode()
    assert bad.count('class="errorlist') == 3
    assert not DatasetSnapshot.objects.filter(project=project).exists()


def test_a_second_snapshot_says_what_changed_since_the_first(project, train_tasks, client,
                                                             alice, bob):
    _rank(project, bob)
    first = _built(project, name=HOSTILE)
    _rank(project, bob)
    second = _built(project, name="second", filters={"splits": ["train"]})
    client.force_login(alice)
    page = client.get(second.get_absolute_url()).content.decode()
    changes = page.split('id="snapshot-changes"')[1].split("</section>")[0]
    assert f'href="/datasets/{first.pk}/"' in changes and ESCAPED in changes
    assert "Different content." in changes and "The filter changed." in changes
    assert "Tasks added: 1; tasks removed: 0." in changes
    assert "<tr><td>train</td><td>+6</td></tr>" in changes

    same = _built(project, name="again", filters={"splits": ["train"]})
    page = client.get(same.get_absolute_url()).content.decode()
    assert "Same content: the rows are identical" in page and "Same filter." in page
    assert "<tr><td>train</td><td>0</td></tr>" in page


def test_a_hostile_snapshot_name_is_escaped(project, train_tasks, client, alice, bob):
    _rank(project, bob)
    snapshot = _built(project, name=HOSTILE)
    client.force_login(alice)
    for url in (f"/projects/{project.pk}/datasets/", snapshot.get_absolute_url()):
        page = client.get(url).content.decode()
        assert HOSTILE not in page and ESCAPED in page, url
    response = client.post(f"/projects/{project.pk}/datasets/", snapshot_form(name=HOSTILE))
    page = client.get(response["Location"]).content.decode()
    assert HOSTILE not in page and ESCAPED in page


def test_downloads_are_only_the_files_the_snapshot_has(project, train_tasks, client, alice,
                                                       bob):
    queued = snapshot_create(project=project, name="queued", kind="prompts")
    _rank(project, bob)
    built = _built(project)
    client.force_login(alice)
    base = f"/datasets/{built.pk}/download/"
    assert client.get(base + "train.jsonl").status_code == 200
    for name in ("train.parquet", "valid.jsonl", "card.jsonl", "train.md", "train.csv",
                 "../train.jsonl", "tasks.txt"):
        assert client.get(base + name).status_code == 404, name
    assert client.get(f"/datasets/{queued.pk}/download/train.jsonl").status_code == 404
    assert client.get(f"/datasets/{queued.pk}/download/card.md").status_code == 404
    (Path(built.directory) / "train.jsonl").unlink()
    assert client.get(base + "train.jsonl").status_code == 404


def test_cancel_stops_a_queued_build(project, train_tasks, client, erin):
    snapshot = snapshot_create(project=project, name="soon cancelled", kind="prompts")
    client.force_login(erin)
    response = client.post(f"/jobs/{snapshot.job_id}/cancel/")
    assert response.status_code == 302
    assert Job.objects.get(pk=snapshot.job_id).status == Job.Status.CANCELLED
    page = client.get(snapshot.get_absolute_url()).content.decode()
    assert "Cancelled" in page and "this snapshot has no files" in page
    assert POLLING not in page and "/cancel/" not in page
    assert not job_run(job_id=snapshot.job_id, worker="w")


def test_the_list_takes_the_same_queries_for_more_snapshots(project, train_tasks, client,
                                                            alice, erin):
    client.force_login(alice)
    url = f"/projects/{project.pk}/datasets/"

    def count():
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    _built(project, kind="prompts")
    snapshot_create(project=project, name="queued", kind="prompts", created_by=alice)
    before = count()
    for i in range(3):
        _built(project, name=f"more {i}", kind="prompts")
        snapshot_create(project=project, name=f"queued {i}", kind="sft", created_by=erin)
    assert count() == before
