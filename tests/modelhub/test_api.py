"""The modelhub API: models, generation jobs, evaluations, scoped to leads and engineers."""

import shutil

import pytest
import torch

from labeling.models import Prompt
from labeling.services.importing import prompts_import, records_from_items
from modelhub.models import Job
from modelhub.services.jobs import job_run


@pytest.fixture
def registered(project, model_root, api, erin):
    response = api(erin).post("/api/v1/models/", {
        "project": project.pk, "name": "tiny", "kind": "base",
        "path": str(model_root / "tiny")}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _prompts(project, n=3, split=None):
    items = [{"prompt": f"Tell me about {i}.", "user_id": f"u{i}"} for i in range(n)]
    prompts_import(project=project, records=records_from_items(items),
                   create_demonstrate_tasks=False)
    if split:
        Prompt.objects.filter(project=project).update(split=split)


def test_models_are_for_leads_and_engineers(project, registered, api, alice, bob, charlie):
    detail = f"/api/v1/models/{registered['id']}/"
    assert api(charlie).get(detail).status_code == 404
    assert api(bob).get(detail).status_code == 403
    assert api(alice).get(detail).json()["lineage"] == [registered["id"]]
    assert api(bob).get("/api/v1/models/").json() == []  # annotators see none of it
    assert [m["name"] for m in api(alice).get("/api/v1/models/").json()] == ["tiny"]
    body = {"project": project.pk, "name": "x", "kind": "base", "path": "/tmp"}
    assert api(bob).post("/api/v1/models/", body, format="json").status_code == 403
    assert api(charlie).post("/api/v1/models/", body, format="json").status_code == 404


def test_registering_a_pickle_checkpoint_is_refused(project, model_root, api, erin):
    pickled = model_root / "pickled"
    shutil.copytree(model_root / "tiny", pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    response = api(erin).post("/api/v1/models/", {
        "project": project.pk, "name": "p", "kind": "base", "path": str(pickled)},
        format="json")
    assert response.status_code == 400
    assert "safetensors" in response.json()["non_field_errors"][0]


def test_a_generation_job_through_the_api(project, registered, api, erin, bob, charlie):
    _prompts(project)
    response = api(erin).post("/api/v1/generation-jobs/", {
        "project": project.pk, "prompt_filter": {"selection": "no_rank_task"},
        "samplers": [{"model": registered["id"], "count": 2, "temperature": 1.0,
                      "max_new_tokens": 4},
                     {"model": registered["id"], "count": 2, "temperature": 0.7,
                      "max_new_tokens": 4}]}, format="json")
    assert response.status_code == 201, response.content
    job = response.json()
    assert (job["status"], job["total"], job["k"]) == ("queued", 3, 4)
    url = f"/api/v1/generation-jobs/{job['id']}/"
    assert api(charlie).get(url).status_code == 404
    assert api(bob).get(url).status_code == 403
    job_run(job_id=job["id"], worker="w")
    done = api(erin).get(url).json()
    assert (done["status"], done["progress"], done["tasks_created"]) == ("succeeded", 3, 3)
    bad = api(erin).post("/api/v1/generation-jobs/", {
        "project": project.pk, "samplers": [{"model": registered["id"], "count": 12}]},
        format="json")
    assert bad.status_code == 400


def test_cancel_through_the_api(project, registered, api, erin, bob):
    _prompts(project)
    job = api(erin).post("/api/v1/generation-jobs/", {
        "project": project.pk, "samplers": [{"model": registered["id"], "count": 4}]},
        format="json").json()
    cancel = f"/api/v1/generation-jobs/{job['id']}/cancel/"
    assert api(bob).post(cancel).status_code == 403
    assert api(erin).post(cancel).json()["status"] == "cancelled"
    assert Job.objects.get(pk=job["id"]).status == Job.Status.CANCELLED


def test_an_evaluation_through_the_api(project, registered, model_root, api, erin, bob):
    second = api(erin).post("/api/v1/models/", {
        "project": project.pk, "name": "tiny-sft", "kind": "sft", "parent": registered["id"],
        "path": str(model_root / "tiny")}, format="json").json()
    assert second["lineage"] == [registered["id"], second["id"]]
    _prompts(project, n=4, split="test")
    response = api(erin).post("/api/v1/evaluations/", {
        "project": project.pk, "model_a": second["id"], "model_b": registered["id"],
        "prompts": 3, "sampling": {"max_new_tokens": 4}}, format="json")
    assert response.status_code == 201, response.content
    evaluation = response.json()
    job_run(job_id=evaluation["generation_job"], worker="w")
    url = f"/api/v1/evaluations/{evaluation['id']}/"
    assert api(bob).get(url).status_code == 403
    result = api(erin).get(url).json()["result"]
    assert (result["tasks"], result["annotated_tasks"], result["win_rate"]) == (3, 0, None)


def test_the_schema_lists_the_modelhub_endpoints(client):
    schema = client.get("/api/schema/").content.decode()
    for path in ("/api/v1/models/", "/api/v1/generation-jobs/{job_id}/cancel/",
                 "/api/v1/evaluations/{evaluation_id}/"):
        assert path in schema
