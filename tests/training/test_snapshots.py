"""Dataset snapshots: filters, policies, files, hashes, changes, permissions, the API."""

import json

import pytest
from datasets import load_dataset

from labeling.models import Prompt, Task
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.metrics import agreement_refresh
from labeling.services.project import project_update
from labeling.services.review import demonstration_review
from labeling.services.submission import annotation_submit
from modelhub.models import Job
from modelhub.services.jobs import job_run
from tests.conftest import rank_items
from training.models import DatasetSnapshot
from training.services.snapshots import SnapshotError, snapshot_create


@pytest.fixture(autouse=True)
def snapshot_root(settings, tmp_path):
    settings.SNAPSHOT_ROOT = tmp_path / "snapshots"
    return settings.SNAPSHOT_ROOT


@pytest.fixture
def ranked(project, bob, dana):
    """Four rank tasks, each ranked by bob and dana: the same order on the first two."""
    project_update(project=project, overlap=2)
    prompts_import(project=project, records=records_from_items(rank_items(4)))
    Prompt.objects.filter(project=project).update(split="train")
    Task.objects.filter(project=project).update(required_annotations=2)
    for n in range(4):
        for user in (bob, dana):
            a = assignment_claim_next(project=project, annotator=user)
            ids = sorted(a.display_order)
            if user == dana and n >= 2:
                ids = ids[::-1]  # dana disagrees completely on the last two tasks
            flags = {ids[-1]: ["contains_pii"]} if user == bob and n == 0 else {}
            annotation_submit(assignment=a, data={"ranking": [
                {"completion": c, "rank": i + 1, "rating": 7 - i, "flags": flags.get(c, [])}
                for i, c in enumerate(ids)]})
    agreement_refresh(project=project)
    return project


def _build(project, **kw):
    snapshot = snapshot_create(project=project, name=kw.pop("name", "s"), **kw)
    assert job_run(job_id=snapshot.job_id, worker="w")
    snapshot.refresh_from_db()
    assert snapshot.job.status == Job.Status.SUCCEEDED, snapshot.job.error
    return snapshot


def _rows(snapshot, split="train"):
    path = f"{snapshot.directory}/{snapshot.files[split]['jsonl']}"
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_preference_pairs_per_annotator_hold_every_pair(ranked):
    snapshot = _build(ranked, kind="preference_pairs")
    rows = _rows(snapshot)
    assert snapshot.row_counts == {"train": 4 * 2 * 6} and len(rows) == 48
    assert snapshot.tasks == 4 and len(snapshot.content_hash) == 64
    assert {"prompt", "chosen", "rejected"} <= set(rows[0])
    loaded = load_dataset("json", data_files=f"{snapshot.directory}/train.jsonl",
                          split="train")
    assert loaded.num_rows == 48


def test_the_same_filter_on_the_same_data_gives_the_same_hash(ranked):
    first = _build(ranked, kind="preference_pairs", filters={"splits": ["train"]})
    second = _build(ranked, kind="preference_pairs", filters={"splits": ["train"]})
    assert first.content_hash == second.content_hash
    other = _build(ranked, kind="preference_pairs", pair_policy="adjacent")
    assert other.content_hash != first.content_hash
    assert other.row_counts == {"train": 4 * 2 * 3}
    assert second.changes["same_content"] and second.changes["previous"] == first.pk
    assert other.changes["rows"] == {"train": 24 - 48}


def test_minimum_agreement_and_excluded_flags_filter_the_pairs(ranked):
    agreeing = _build(ranked, kind="preference_pairs", filters={"min_agreement": 0.5})
    assert agreeing.tasks == 2 and agreeing.row_counts == {"train": 2 * 2 * 6}
    no_pii = _build(ranked, kind="preference_pairs", filters={"exclude_flags": ["contains_pii"]})
    # The flagged response leaves its task: K=3 there, 3 pairs per ranking instead of 6.
    assert no_pii.row_counts == {"train": 48 - 2 * 3}


def test_merge_policies(ranked):
    consensus = _build(ranked, kind="preference_pairs", merge="consensus")
    majority = _build(ranked, kind="preference_pairs", merge="majority")
    # Where bob and dana agree, both give the six pairs; where they are opposite, the
    # majority has none and the consensus ties everything (no pair either).
    assert majority.row_counts == {"train": 2 * 6}
    assert consensus.row_counts == {"train": 2 * 6}


def test_rankings_keep_every_annotators_raw_ranking(ranked):
    snapshot = _build(ranked, kind="rankings")
    rows = _rows(snapshot)
    assert len(rows) == 4
    text = json.dumps(rows[0])
    assert "consensus" in text and str(rows[0]["task_id"]) in text
    loaded = load_dataset("json", data_files=f"{snapshot.directory}/train.jsonl",
                          split="train")
    assert loaded.num_rows == 4


def test_sft_leaves_out_rejected_demonstrations(project, bob, alice):
    prompts_import(project=project, records=records_from_items(
        [{"prompt": f"Write about {i}", "user_id": "u1"} for i in range(3)]))
    Prompt.objects.filter(project=project).update(split="train")
    annotations = []
    for i in range(3):
        a = assignment_claim_next(project=project, annotator=bob)
        annotations.append(
            annotation_submit(assignment=a, data={"text": f"Answer {i}."}).annotation)
    demonstration_review(annotation=annotations[0], reviewer=alice, accepted=False,
                         comment="made up")
    demonstration_review(annotation=annotations[1], reviewer=alice, accepted=True)
    assert _build(project, kind="sft").row_counts == {"train": 2}
    assert _build(project, kind="sft", filters={"accepted_only": True}).row_counts == {
        "train": 1}


def test_prompts_snapshot_and_parquet(ranked):
    snapshot = _build(ranked, kind="prompts", parquet=True)
    assert snapshot.row_counts == {"train": 4}
    assert set(snapshot.files["train"]) == {"jsonl", "parquet"}
    loaded = load_dataset("parquet", data_files=f"{snapshot.directory}/train.parquet",
                          split="train")
    assert loaded.num_rows == 4


def test_bad_filters_are_refused(project):
    for filters in ({"min_agreement": 2}, {"splits": ["nope"]}, {"since": "yesterday"},
                    {"colour": "red"}):
        with pytest.raises(SnapshotError):
            snapshot_create(project=project, name="x", kind="sft", filters=filters)
    assert not DatasetSnapshot.objects.exists()


def test_a_build_that_died_leaves_nothing_behind_and_a_rerun_finishes(ranked, snapshot_root,
                                                                       monkeypatch):
    from training.services import snapshots

    snapshot = snapshot_create(project=ranked, name="s", kind="preference_pairs")
    real = snapshots._Builder._ranking_rows

    def dies(*args):
        raise SystemExit("the worker died")

    monkeypatch.setattr(snapshots._Builder, "_ranking_rows", dies)
    with pytest.raises(SystemExit):
        job_run(job_id=snapshot.job_id, worker="w1")
    assert not any(snapshot_root.iterdir())  # the temporary directory is gone
    monkeypatch.setattr(snapshots._Builder, "_ranking_rows", real)
    Job.objects.filter(pk=snapshot.job_id).update(status=Job.Status.QUEUED)
    job_run(job_id=snapshot.job_id, worker="w2")
    snapshot.refresh_from_db()
    assert snapshot.row_counts == {"train": 48}
    assert [p.name for p in snapshot_root.iterdir()] == [str(snapshot.pk)]


def test_outsiders_and_annotators_cannot_create_or_download(ranked, api, bob, charlie, erin):
    url = f"/api/v1/projects/{ranked.pk}/snapshots/"
    body = {"kind": "preference_pairs", "filters": {"splits": ["train"]}}
    assert api(charlie).post(url, body, format="json").status_code == 404
    assert api(bob).post(url, body, format="json").status_code == 403
    created = api(erin).post(url, body, format="json")
    assert created.status_code == 201, created.content
    snapshot_id = created.json()["id"]
    job_run(job_id=DatasetSnapshot.objects.get(pk=snapshot_id).job_id, worker="w")
    detail = api(erin).get(f"/api/v1/snapshots/{snapshot_id}/").json()
    assert detail["status"] == "succeeded" and detail["row_counts"] == {"train": 48}
    download = f"/api/v1/snapshots/{snapshot_id}/download/?split=train&format=jsonl"
    assert api(charlie).get(download).status_code == 404
    assert api(bob).get(download).status_code == 403
    response = api(erin).get(download)
    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 48
    card = api(erin).get(f"/api/v1/snapshots/{snapshot_id}/download/?split=card")
    assert b"".join(card.streaming_content).startswith(b"---")
    missing = api(erin).get(f"/api/v1/snapshots/{snapshot_id}/download/?split=test")
    assert missing.status_code == 404


def test_imported_trl_pairs_come_back_out_as_the_same_pairs(project, tmp_path):
    from pathlib import Path

    from labeling.services.preference_import import preferences_import_file

    source = Path(__file__).resolve().parents[1] / "labeling" / "data" / "trl_pairs.jsonl"
    with source.open("rb") as handle:
        report = preferences_import_file(project=project, file=handle, fmt="trl",
                                         source="hh")
    assert report.imported
    lines = [json.loads(line) for line in source.read_text().splitlines()]
    # Prompts that normalise the same share one task (and the first one's wording), so
    # compare the responses of each pair: every line's pair, and no other.
    expected = {(row["chosen"], row["rejected"]) for row in lines
                if isinstance(row["chosen"], str)}
    snapshot = _build(project, kind="preference_pairs")
    rows = [row for split in snapshot.files for row in _rows(snapshot, split)]
    got = {(row["chosen"][-1]["content"], row["rejected"][-1]["content"]) for row in rows}
    assert expected <= got and len(rows) == len(lines)


def test_the_export_command_writes_the_files(ranked, tmp_path):
    from django.core.management import call_command

    out = tmp_path / "export"
    call_command("export_dataset", project=ranked.pk, kind="preference_pairs", out=str(out),
                 splits=["train"], parquet=True, margin=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "tasks.txt", "train.jsonl", "train.parquet"]
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and all(row["margin"] >= 0 for row in rows)
    snapshot = DatasetSnapshot.objects.get()
    assert snapshot.job.status == Job.Status.SUCCEEDED
