"""The model pages: registry, generation jobs, cancel and evaluations, for leads and engineers."""

import shutil

import pytest
import torch
from django.db import connection
from django.test.utils import CaptureQueriesContext

from labeling.models import Prompt
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import project_update
from labeling.services.submission import annotation_submit
from modelhub.models import Evaluation, GenerationJob, Job, ModelVersion
from modelhub.services import jobs
from modelhub.services.evaluation import evaluation_create
from modelhub.services.generation import generation_job_create
from modelhub.services.registry import model_register
from modelhub.views import humanise_count
from tests.pages import assert_data_roles_only, csp_clean

HOSTILE = "<script>alert(1)</script>"
POLLING = 'hx-trigger="every 2s"'


def _register(project, model_root, name, kind="sft", parent=None):
    return model_register(project=project, name=name, kind=kind, parent=parent,
                          path=str(model_root / "tiny"))


@pytest.fixture
def prompts(project):
    items = [{"prompt": f"Write a line about the number {i}.", "user_id": f"u{i}"}
             for i in range(3)]
    prompts_import(project=project, records=records_from_items(items),
                   create_demonstrate_tasks=False)
    return list(Prompt.objects.filter(project=project).order_by("pk"))


def _generation(project, model, **kw):
    return generation_job_create(
        project=project, prompt_filter={"selection": "no_rank_task"},
        samplers=[{"model": model.pk, "count": 2, "max_new_tokens": 4, "seed": 1}], **kw)


def _evaluation(project, model_a, model_b, prompts):
    Prompt.objects.filter(pk__in=[p.pk for p in prompts]).update(split="test")
    return evaluation_create(project=project, model_a=model_a, model_b=model_b, prompts=2,
                             sampling={"temperature": 1.0, "max_new_tokens": 4})


def generation_form(model_pk="", **fields) -> dict:
    """Return the POST data of the generation form: the first sampler row set to a model."""
    data = {"selection": "no_rank_task", "split": "", "category": "", "ids": "", "limit": "",
            "create_tasks": "on", "sampler-TOTAL_FORMS": "3", "sampler-INITIAL_FORMS": "0",
            "sampler-MIN_NUM_FORMS": "0", "sampler-MAX_NUM_FORMS": "3"}
    for i in range(3):
        data |= {f"sampler-{i}-model": "", f"sampler-{i}-count": "2",
                 f"sampler-{i}-temperature": "1.0", f"sampler-{i}-top_p": "1.0",
                 f"sampler-{i}-max_new_tokens": "64", f"sampler-{i}-seed": "0"}
    data |= {"sampler-0-model": str(model_pk), "sampler-0-max_new_tokens": "4"}
    return data | fields


def test_every_page_and_form_refuses_outsiders_and_annotators(
        project, base, prompts, model_root, client, alice, bob, erin, charlie):
    other = _register(project, model_root, "tiny-sft", parent=base)
    generation = _generation(project, base)
    evaluation = _evaluation(project, other, base, prompts)
    pages = [f"/projects/{project.pk}/models/", f"/models/{base.pk}/",
             f"/projects/{project.pk}/generation/", f"/generation/{generation.job_id}/",
             f"/projects/{project.pk}/evaluations/", f"/evaluations/{evaluation.pk}/"]
    posts = [f"/projects/{project.pk}/models/", f"/projects/{project.pk}/generation/",
             f"/projects/{project.pk}/evaluations/", f"/jobs/{generation.job_id}/cancel/"]
    assert_data_roles_only(client, outsider=charlie, annotator=bob, members=(alice, erin),
                           pages=pages, posts=[(url, {"name": "x"}) for url in posts])
    assert Job.objects.get(pk=generation.job_id).status == Job.Status.QUEUED


def test_the_project_page_links_leads_and_engineers_to_the_models(project, client, alice,
                                                                    bob):
    client.force_login(alice)
    link = f"/projects/{project.pk}/models/"
    assert link in client.get(f"/projects/{project.pk}/").content.decode()
    client.force_login(bob)
    assert link not in client.get(f"/projects/{project.pk}/").content.decode()


def test_a_lead_registers_a_model_through_the_form(project, model_root, client, alice):
    client.force_login(alice)
    url = f"/projects/{project.pk}/models/"
    response = client.post(url, {"name": "tiny", "kind": "base",
                                 "path": str(model_root / "tiny")})
    model = ModelVersion.objects.get(project=project, name="tiny")
    assert response.status_code == 302 and response["Location"] == f"/models/{model.pk}/"
    assert model.created_by == alice and model.parameter_count > 0
    child = client.post(url, {"name": "tiny-sft", "kind": "sft", "parent": model.pk,
                              "path": str(model_root / "tiny")})
    assert child.status_code == 302
    assert ModelVersion.objects.get(project=project, name="tiny-sft").parent == model
    page = client.get(url).content.decode()
    assert "tiny-sft" in page and humanise_count(model.parameter_count) in page


def test_registration_errors_show_next_to_the_form(project, model_root, client, erin):
    pickled = model_root / "pickled"
    shutil.copytree(model_root / "tiny", pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    client.force_login(erin)
    url = f"/projects/{project.pk}/models/"
    response = client.post(url, {"name": "pickled", "kind": "base", "path": str(pickled)})
    assert response.status_code == 200
    page = response.content.decode()
    assert "safetensors" in page and 'class="errorlist' in page
    both = client.post(url, {"name": "x", "kind": "base", "path": str(pickled),
                             "hub_id": "gpt2"}).content.decode()
    assert "give either a path or a hub id" in both
    outside = client.post(url, {"name": "x", "kind": "base", "path": "/etc"}).content.decode()
    assert "outside the model directories" in outside
    assert not ModelVersion.objects.filter(project=project).exists()


def test_an_engineer_runs_a_generation_job_from_the_form_to_its_end(project, base, prompts,
                                                                     client, erin):
    client.force_login(erin)
    response = client.post(f"/projects/{project.pk}/generation/", generation_form(base.pk))
    generation = GenerationJob.objects.get(project=project)
    url = f"/generation/{generation.job_id}/"
    assert response.status_code == 302 and response["Location"] == url
    assert generation.k == 2 and generation.samplers[0]["max_new_tokens"] == 4
    assert generation.job.created_by == erin
    page = client.get(url).content.decode()
    assert "Queued" in page and "<progress" in page and POLLING in page
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    assert "<html" not in fragment.content.decode() and POLLING in fragment.content.decode()
    assert "HX-Request" in fragment["Vary"]
    listing = client.get(f"/projects/{project.pk}/generation/").content.decode()
    assert f'id="generation-{generation.job_id}"' in listing and POLLING in listing

    assert jobs.job_run(job_id=generation.job_id, worker="w")

    page = client.get(url).content.decode()
    assert "Succeeded" in page and 'value="100"' in page
    assert "<pre class=\"job-log\">" in page and "done: 6 completions" in page
    fragment = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert 'id="generation-live"' in fragment and "Succeeded" in fragment
    assert "hx-trigger" not in fragment and "/cancel/" not in fragment
    rows = client.get(f"/projects/{project.pk}/generation/",
                      HTTP_HX_REQUEST="true").content.decode()
    assert 'id="generation-rows"' in rows
    assert "hx-trigger" not in rows and "<html" not in rows


def test_the_generation_form_shows_validation_errors(project, base, prompts, client, alice):
    client.force_login(alice)
    url = f"/projects/{project.pk}/generation/"
    one = client.post(url, generation_form(base.pk, **{"sampler-0-count": "1"}))
    assert one.status_code == 200 and "2 to 9" in one.content.decode()
    no_split = client.post(url, generation_form(base.pk, selection="split")).content.decode()
    assert "Needed for this selection of prompts." in no_split
    bad_ids = client.post(url, generation_form(base.pk, selection="ids",
                                               ids="1, x")).content.decode()
    assert "Prompt ids are whole numbers." in bad_ids
    top_p = client.post(url, generation_form(base.pk, **{"sampler-0-top_p": "0"}))
    assert "top_p must be a number in (0, 1]" in top_p.content.decode()
    no_model = client.post(url, generation_form("")).content.decode()
    assert "give at least one model" in no_model
    nothing = client.post(url, generation_form(base.pk, selection="category",
                                               category="rewrite")).content.decode()
    assert "no prompt matches this selection" in nothing
    assert not GenerationJob.objects.filter(project=project).exists()


def test_the_form_picks_prompts_by_ids_and_limit(project, base, prompts, client, alice):
    client.force_login(alice)
    ids = f"{prompts[0].pk} {prompts[2].pk},{prompts[1].pk}"
    client.post(f"/projects/{project.pk}/generation/",
                generation_form(base.pk, selection="ids", ids=ids, limit="2"))
    generation = GenerationJob.objects.get(project=project)
    assert generation.prompt_ids == [prompts[0].pk, prompts[1].pk]
    assert generation.prompt_filter["ids"] == [prompts[0].pk, prompts[2].pk, prompts[1].pk]


def test_cancel_stops_a_queued_job_and_redirects_back(project, base, prompts, client, erin):
    generation = _generation(project, base)
    client.force_login(erin)
    url = f"/jobs/{generation.job_id}/cancel/"
    assert client.get(url).status_code == 405
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == f"/generation/{generation.job_id}/"
    assert Job.objects.get(pk=generation.job_id).status == Job.Status.CANCELLED
    page = client.get(response["Location"]).content.decode()
    assert "Cancelled" in page and "Job cancelled." in page and POLLING not in page
    assert not jobs.job_run(job_id=generation.job_id, worker="w")


def test_cancel_of_a_running_job_is_asked_of_its_worker(project, base, prompts, client, alice):
    generation = _generation(project, base)
    jobs.job_claim(job_id=generation.job_id, worker="w")
    client.force_login(alice)
    client.post(f"/jobs/{generation.job_id}/cancel/")
    job = Job.objects.get(pk=generation.job_id)
    assert job.status == Job.Status.RUNNING and job.cancel_requested
    page = client.get(f"/generation/{generation.job_id}/").content.decode()
    assert "Cancel requested" in page


def test_an_evaluation_from_the_form_reports_the_win_rate(project, base, prompts, model_root,
                                                         client, alice, bob):
    hostile = _register(project, model_root, HOSTILE, parent=base)
    Prompt.objects.filter(project=project).update(split="test")
    project_update(project=project, overlap=1)
    client.force_login(alice)
    response = client.post(f"/projects/{project.pk}/evaluations/", {
        "model_a": hostile.pk, "model_b": base.pk, "prompts": "2", "temperature": "1.0",
        "max_new_tokens": "4"})
    evaluation = Evaluation.objects.get(project=project)
    url = f"/evaluations/{evaluation.pk}/"
    assert response.status_code == 302 and response["Location"] == url
    assert evaluation.prompts == 2 and evaluation.generation.samplers[0]["max_new_tokens"] == 4
    page = client.get(url).content.decode()
    assert 'id="win-rate"' in page and "No task of this evaluation" in page and POLLING in page
    assert jobs.job_run(job_id=evaluation.generation.job_id, worker="w")
    fragment = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert "Succeeded" in fragment and "hx-trigger" not in fragment
    links = {link.task_id: link for link in evaluation.tasks.all()}
    for tie in (False, True):  # A wins one task and ties the other
        assignment = assignment_claim_next(project=project, annotator=bob)
        link = links[assignment.task_id]
        annotation_submit(assignment=assignment, data={"ranking": [
            {"completion": link.completion_a_id, "rank": 1, "rating": 5},
            {"completion": link.completion_b_id, "rank": 1 if tie else 2, "rating": 4}]})
    page = client.get(url).content.decode()
    assert '<span class="stat-value" id="win-rate-value">0.750</span>' in page
    assert "95% interval" in page and 'id="win-rate-chart"' in page
    assert "<td>1</td><td>1</td><td>0</td><td>2 of 2</td>" in page
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert csp_clean(page)
    detail = client.get(f"/models/{hostile.pk}/").content.decode()
    assert f"/evaluations/{evaluation.pk}/" in detail and "0.750" in detail


def test_the_evaluation_form_shows_service_errors(project, base, prompts, model_root, client,
                                                  erin):
    other = _register(project, model_root, "other")
    client.force_login(erin)
    url = f"/projects/{project.pk}/evaluations/"
    same = client.post(url, {"model_a": base.pk, "model_b": base.pk, "prompts": "2",
                             "temperature": "1", "max_new_tokens": "4"}).content.decode()
    assert "compare two different models" in same
    no_test = client.post(url, {"model_a": other.pk, "model_b": base.pk, "prompts": "2",
                                "temperature": "1", "max_new_tokens": "4"}).content.decode()
    assert "no prompts in its test split" in no_test
    assert not Evaluation.objects.filter(project=project).exists()


def test_the_model_page_shows_its_lineage_children_and_jobs(project, base, prompts,
                                                            model_root, client, erin):
    sft = _register(project, model_root, "tiny-sft", parent=base)
    policy = _register(project, model_root, "tiny-ppo", kind="policy", parent=sft)
    generation = _generation(project, sft)
    client.force_login(erin)
    page = client.get(f"/models/{policy.pk}/").content.decode()
    lineage = page.split('id="lineage"')[1].split('id="children"')[0]
    assert (lineage.index(f'href="/models/{base.pk}/"')
            < lineage.index(f'href="/models/{sft.pk}/"') < lineage.index("tiny-ppo"))
    assert model_root.name in page  # the artifact directory
    sft_page = client.get(f"/models/{sft.pk}/").content.decode()
    children = sft_page.split('id="children"')[1].split("</ul>")[0]
    assert f'href="/models/{policy.pk}/"' in children
    assert f'href="/generation/{generation.job_id}/"' in sft_page
    assert f'href="/generation/{generation.job_id}/"' not in page


def test_hostile_model_names_are_escaped_everywhere(project, base, prompts, model_root,
                                                   client, alice):
    hostile = _register(project, model_root, HOSTILE, parent=base)
    generation = _generation(project, hostile)
    ModelVersion.objects.filter(pk=hostile.pk).update(metrics={HOSTILE: HOSTILE})
    child = _register(project, model_root, "child", parent=hostile)
    client.force_login(alice)
    for url in (f"/projects/{project.pk}/models/", f"/models/{hostile.pk}/",
                f"/models/{child.pk}/", f"/projects/{project.pk}/generation/",
                f"/generation/{generation.job_id}/"):
        page = client.get(url).content.decode()
        assert HOSTILE not in page, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, url


def test_list_pages_take_the_same_queries_for_more_rows(project, base, prompts, model_root,
                                                        client, alice):
    client.force_login(alice)
    urls = [f"/projects/{project.pk}/models/", f"/projects/{project.pk}/generation/",
            f"/projects/{project.pk}/evaluations/"]

    def counts():
        result = []
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200
            result.append(len(queries))
        return result

    _generation(project, base, created_by=alice)
    sft = _register(project, model_root, "tiny-sft", parent=base)
    _evaluation(project, sft, base, prompts[:1])
    before = counts()
    for i in range(3):
        model = _register(project, model_root, f"more-{i}", parent=sft)
        _generation(project, model, create_tasks=False, created_by=alice)
    _evaluation(project, base, sft, prompts[:1])
    assert counts() == before


@pytest.mark.parametrize(("count", "text"), [
    (0, "0"), (999, "999"), (85_000, "85.0 K"), (3_213_000, "3.2 M"),
    (1_300_000_000, "1.3 B"),
])
def test_parameter_counts_are_humanised(count, text):
    assert humanise_count(count) == text
