"""The training-run API: create, list, detail, cancel, resume, the config settings."""

import shutil

import pytest

from labeling.models import Role
from labeling.services.project import membership_add, project_create
from modelhub.models import Job
from modelhub.services.registry import model_register
from tests.training.helpers import demonstration_snapshot, log_metrics
from training.models import TrainingRun
from training.services.runs import run_create
from training.services.snapshots import snapshot_create

RUNS = "/api/v1/training-runs/"


@pytest.fixture(autouse=True)
def roots(settings, tmp_path):
    settings.SNAPSHOT_ROOT = tmp_path / "snapshots"
    settings.MODEL_ROOT = tmp_path / "models"
    settings.MODEL_REGISTRY_ROOTS = [tmp_path / "models"]
    return tmp_path


def _model(project, name, tiny_model, roots, kind="base"):
    shutil.copytree(tiny_model, roots / "models" / name)
    return model_register(project=project, name=name, kind=kind,
                          path=str(roots / "models" / name))


@pytest.fixture
def base(project, tiny_model, roots):
    return _model(project, "base", tiny_model, roots)


@pytest.fixture
def demonstrations(project, bob):
    return demonstration_snapshot(project, bob, 4)


@pytest.fixture
def other(charlie):
    """Charlie's own project (he leads it)."""
    return project_create(creator=charlie, name="Other")


def _body(project, snapshot, parent, **extra):
    return {"project": project.pk, "kind": "sft", "snapshot": snapshot.pk,
            "parent": parent.pk, "config": {"max_steps": 4}, "seed": 7, **extra}


def _run(project, snapshot, parent):
    return run_create(project=project, kind="sft", snapshot=snapshot, parent=parent,
                      config={"max_steps": 4})


def test_an_engineer_starts_a_run(project, base, demonstrations, api, erin):
    response = api(erin).post(RUNS, _body(project, demonstrations, base), format="json")
    assert response.status_code == 201, response.content
    run = response.json()
    assert (run["kind"], run["status"], run["snapshot"], run["parent"]) == (
        "sft", "queued", demonstrations.pk, base.pk)
    assert (run["config"], run["seed"], run["output_model"]) == ({"max_steps": 4}, 7, None)
    saved = TrainingRun.objects.get(pk=run["id"])
    assert saved.created_by == erin and saved.job.queue == "gpu"


def test_it_rejects_an_unknown_kind(project, base, demonstrations, api, erin):
    response = api(erin).post(RUNS, _body(project, demonstrations, base, kind="dpo"),
                              format="json")
    assert response.status_code == 400
    assert "kind" in response.json()


def test_it_rejects_a_snapshot_of_the_wrong_kind(project, base, demonstrations, api, erin):
    response = api(erin).post(RUNS, _body(project, demonstrations, base, kind="reward"),
                              format="json")
    assert response.status_code == 400
    assert response.json() == {
        "non_field_errors": ["a reward run reads a rankings snapshot, not sft"]}


def test_it_rejects_a_bad_config_naming_the_setting(project, base, demonstrations, api, erin):
    body = _body(project, demonstrations, base, config={"learning_rat": 1})
    response = api(erin).post(RUNS, body, format="json")
    assert response.status_code == 400
    assert "learning_rat" in response.json()["non_field_errors"][0]
    body = _body(project, demonstrations, base, config={"learning_rate": -1})
    message = api(erin).post(RUNS, body, format="json").json()["non_field_errors"][0]
    assert "invalid sft config" in message and "learning_rate" in message


def test_it_rejects_ids_of_another_project(project, base, demonstrations, other, tiny_model,
                                           roots, api, erin):
    foreign_model = _model(other, "theirs", tiny_model, roots)
    foreign_snapshot = snapshot_create(project=other, kind="sft")
    body = _body(project, foreign_snapshot, foreign_model, sft_snapshot=foreign_snapshot.pk)
    response = api(erin).post(RUNS, body, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "snapshot": [f"no snapshot {foreign_snapshot.pk} in this project"],
        "parent": [f"no model {foreign_model.pk} in this project"],
        "sft_snapshot": [f"no snapshot {foreign_snapshot.pk} in this project"],
    }
    assert not TrainingRun.objects.filter(project=project).exists()


def test_only_leads_and_engineers_start_runs(project, base, demonstrations, api, bob,
                                             charlie):
    body = _body(project, demonstrations, base)
    assert api(bob).post(RUNS, body, format="json").status_code == 403
    assert api(charlie).post(RUNS, body, format="json").status_code == 404
    assert api(None).post(RUNS, body, format="json").status_code in (401, 403)
    assert not TrainingRun.objects.filter(project=project).exists()


def test_the_list_holds_the_runs_of_your_projects(project, base, demonstrations, other,
                                                 api, alice, bob, charlie,
                                                 django_assert_num_queries):
    runs = [_run(project, demonstrations, base) for _ in range(3)]
    with django_assert_num_queries(3):  # roles, count, page
        listing = api(alice).get(RUNS).json()
    assert listing["count"] == 3
    assert [r["id"] for r in listing["results"]] == [r.pk for r in reversed(runs)]
    assert api(alice).get(RUNS, {"project": project.pk}).json()["count"] == 3
    assert api(charlie).get(RUNS).json()["count"] == 0  # his own project has none
    assert api(charlie).get(RUNS, {"project": other.pk}).json()["count"] == 0
    assert api(charlie).get(RUNS, {"project": project.pk}).status_code == 404
    assert api(bob).get(RUNS).json()["count"] == 0  # annotators see no runs
    assert api(bob).get(RUNS, {"project": project.pk}).status_code == 403


def test_the_detail_shows_progress_metrics_and_the_log_tail(project, base, demonstrations,
                                                            api, erin):
    run = _run(project, demonstrations, base)
    metrics = [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.1, "eval_loss": 2.3}]
    log_metrics(run, metrics)
    TrainingRun.objects.filter(pk=run.pk).update(
        last_checkpoint="/ckpt/checkpoint-2",
        provenance={"seed": 0})
    Job.objects.filter(pk=run.job_id).update(status=Job.Status.RUNNING, progress=2, total=4,
                                             attempts=1, log="x" * 5000 + "step 2\n")
    detail = api(erin).get(f"{RUNS}{run.pk}/").json()
    assert (detail["status"], detail["progress"], detail["total"], detail["attempts"]) == (
        "running", 2, 4, 1)
    assert (detail["step"], detail["max_steps"], detail["metrics"]) == (2, 4, metrics)
    assert detail["last_checkpoint"] == "/ckpt/checkpoint-2"
    assert detail["provenance"] == {"seed": 0} and detail["config"] == {"max_steps": 4}
    assert len(detail["log"]) == 4000 and detail["log"].endswith("step 2\n")
    assert detail["error"] == "" and detail["output_model"] is None


def test_a_finished_run_shows_its_model(project, base, demonstrations, tiny_model, roots,
                                        api, erin):
    run = _run(project, demonstrations, base)
    made = _model(project, "made", tiny_model, roots, kind="sft")
    TrainingRun.objects.filter(pk=run.pk).update(output_model=made)
    Job.objects.filter(pk=run.job_id).update(status=Job.Status.SUCCEEDED)
    detail = api(erin).get(f"{RUNS}{run.pk}/").json()
    assert detail["output_model"] == {"id": made.pk, "name": "made", "kind": "sft",
                                      "artifact_path": made.artifact_path}


def test_runs_are_hidden_from_annotators_and_outsiders(project, base, demonstrations, api,
                                                       bob, charlie):
    run = _run(project, demonstrations, base)
    for url in (f"{RUNS}{run.pk}/", f"{RUNS}{run.pk}/cancel/", f"{RUNS}{run.pk}/resume/"):
        method = "get" if url.endswith(f"{run.pk}/") else "post"
        assert getattr(api(bob), method)(url).status_code == 403, url
        assert getattr(api(charlie), method)(url).status_code == 404, url
    assert api(bob).get(f"{RUNS}999999/").status_code == 404
    assert Job.objects.get(pk=run.job_id).status == Job.Status.QUEUED


def test_cancel_stops_a_queued_run(project, base, demonstrations, api, alice):
    run = _run(project, demonstrations, base)
    response = api(alice).post(f"{RUNS}{run.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert Job.objects.get(pk=run.job_id).status == Job.Status.CANCELLED


def test_resume_queues_a_failed_run_again(project, base, demonstrations, api, erin):
    run = _run(project, demonstrations, base)
    Job.objects.filter(pk=run.job_id).update(status=Job.Status.FAILED, attempts=3,
                                             error="out of memory")
    response = api(erin).post(f"{RUNS}{run.pk}/resume/")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["error"]) == ("queued", "")


def test_a_succeeded_or_queued_run_cannot_be_resumed(project, base, demonstrations, api,
                                                     erin):
    run = _run(project, demonstrations, base)
    response = api(erin).post(f"{RUNS}{run.pk}/resume/")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "only a failed or cancelled run can be resumed, not a queued one"}
    Job.objects.filter(pk=run.job_id).update(status=Job.Status.SUCCEEDED)
    response = api(erin).post(f"{RUNS}{run.pk}/resume/")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_the_config_endpoint_describes_the_settings_of_a_kind(db, api, bob):
    response = api(bob).get(f"{RUNS}config/sft/")
    assert response.status_code == 200
    body = response.json()
    settings = {s["name"]: s for s in body["settings"]}
    assert body["kind"] == "sft" and "model_path" not in settings
    assert settings["learning_rate"]["group"] == "training"
    assert settings["learning_rate"]["type"] == "float" and settings["learning_rate"]["help"]
    assert {s["name"] for s in api(bob).get(f"{RUNS}config/ppo/").json()["settings"]} >= {
        "kl_coef", "ptx_coef"}
    assert api(bob).get(f"{RUNS}config/dpo/").status_code == 404
    assert api(None).get(f"{RUNS}config/sft/").status_code in (401, 403)


def test_the_list_spans_every_project_you_engineer(project, base, demonstrations, other,
                                                  api, erin):
    membership_add(project=other, username="erin", role=Role.ENGINEER)
    _run(project, demonstrations, base)
    listing = api(erin).get(RUNS).json()
    assert listing["count"] == 1 and listing["results"][0]["project"] == project.pk
    assert api(erin).get(RUNS, {"project": other.pk}).json()["count"] == 0


def test_the_schema_lists_the_run_endpoints(db, client):
    schema = client.get("/api/schema/").content.decode()
    for path in ("/api/v1/training-runs/", "/api/v1/training-runs/{run_id}/cancel/",
                 "/api/v1/training-runs/{run_id}/resume/",
                 "/api/v1/training-runs/config/{kind}/"):
        assert path in schema
