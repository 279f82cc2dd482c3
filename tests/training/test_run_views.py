"""The training-run pages: list, launch forms, the live run page, cancel and resume."""

import math
import re
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from labeling.charts import line_chart
from modelhub.models import Job, ModelVersion
from tests.pages import assert_data_roles_only
from tests.training.helpers import log_metrics
from training.configs import describe
from training.models import DatasetSnapshot, TrainingRun
from training.services.runs import run_create

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
POLLING = 'hx-trigger="every 3s"'


def _snapshot(project, kind, name=None, built=True) -> DatasetSnapshot:
    """Return a snapshot row (built: it has a content hash; no files are needed here)."""
    job = Job.objects.create(
        project=project, kind=Job.Kind.SNAPSHOT, queue="default",
        status=Job.Status.SUCCEEDED if built else Job.Status.QUEUED)
    return DatasetSnapshot.objects.create(
        project=project, job=job, name=name or kind, kind=kind,
        content_hash=f"{kind}-hash".ljust(64, "0") if built else "",
        row_counts={"train": 3, "valid": 1} if built else {})


def _model(project, name, kind="base", **fields) -> ModelVersion:
    return ModelVersion.objects.create(project=project, name=name, kind=kind,
                                       artifact_path=f"/models/{name}", **fields)


@pytest.fixture
def inputs(project):
    """Models and built snapshots of every kind a run reads, plus ones no form may offer."""
    base = _model(project, "tiny-base")
    return SimpleNamespace(
        base=base,
        sft_model=_model(project, "tiny-sft", kind="sft", parent=base),
        reward_model=_model(project, "tiny-rm", kind="reward", parent=base),
        archived=_model(project, "old-base", status=ModelVersion.Status.ARCHIVED),
        demonstrations=_snapshot(project, "sft", "demos"),
        rankings=_snapshot(project, "rankings", "ranks"),
        prompts=_snapshot(project, "prompts", "ppo prompts"),
        unbuilt=_snapshot(project, "sft", "still building", built=False),
    )


def _run(project, inputs, kind="sft", **kw) -> TrainingRun:
    """Queue a run (its job's message is sent on commit: never, in these tests)."""
    snapshot = {"sft": inputs.demonstrations, "reward": inputs.rankings,
                "ppo": inputs.prompts}[kind]
    parent = inputs.base if kind == "sft" else inputs.sft_model
    if kind == "ppo":
        kw.setdefault("reward_model", inputs.reward_model)
    return run_create(project=project, kind=kind, snapshot=snapshot, parent=parent, **kw)


def launch_form(kind, **fields) -> dict:
    """Return the POST data of a launch form with every setting at its default."""
    data = {}
    for setting in describe(kind):
        default = setting["default"]
        if default is None:
            value = ""
        elif isinstance(default, bool):
            value = "true" if default else "false"
        elif isinstance(default, list):
            value = ", ".join(default)
        else:
            value = str(default)
        data[setting["name"]] = value
    return data | {key: str(value) for key, value in fields.items()}


def _finish(run, status=Job.Status.SUCCEEDED, **fields):
    Job.objects.filter(pk=run.job_id).update(status=status, **fields)
    run.refresh_from_db()
    run.job.refresh_from_db()


# --- permissions -------------------------------------------------------------------


def test_every_run_page_and_action_refuses_outsiders_and_annotators(
        project, inputs, client, alice, bob, erin, charlie):
    run = _run(project, inputs)
    pages = [f"/projects/{project.pk}/runs/", f"/projects/{project.pk}/runs/new/sft/",
             f"/projects/{project.pk}/runs/new/reward/", f"/projects/{project.pk}/runs/new/ppo/",
             f"/runs/{run.pk}/"]
    posts = [(f"/projects/{project.pk}/runs/new/sft/",
              launch_form("sft", snapshot=inputs.demonstrations.pk, parent=inputs.base.pk)),
             (f"/runs/{run.pk}/cancel/", {}), (f"/runs/{run.pk}/resume/", {})]
    assert_data_roles_only(client, outsider=charlie, annotator=bob, members=(alice, erin),
                           pages=pages, posts=posts)
    assert TrainingRun.objects.filter(project=project).count() == 1
    assert Job.objects.get(pk=run.job_id).status == Job.Status.QUEUED


def test_a_missing_run_and_an_unknown_kind_are_not_found(project, client, alice):
    client.force_login(alice)
    assert client.get("/runs/999999/").status_code == 404
    assert client.post("/runs/999999/cancel/").status_code == 404
    assert client.get(f"/projects/{project.pk}/runs/new/dpo/").status_code == 404


def test_the_project_pages_link_to_the_runs(project, inputs, client, alice):
    client.force_login(alice)
    link = f'href="/projects/{project.pk}/runs/"'
    assert link in client.get(f"/projects/{project.pk}/").content.decode()
    assert link in client.get(f"/projects/{project.pk}/datasets/").content.decode()


# --- list --------------------------------------------------------------------------


def test_the_list_shows_progress_and_the_latest_loss_and_polls_while_active(
        project, inputs, client, erin):
    run = _run(project, inputs)
    Job.objects.filter(pk=run.job_id).update(progress=3, total=10)
    log_metrics(run, [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.25},
                      {"step": 2, "eval_loss": 1.5}])
    client.force_login(erin)
    url = f"/projects/{project.pk}/runs/"
    page = client.get(url).content.decode()
    row = page[page.index(f'id="run-{run.pk}"'):]
    assert "step 3 of 10" in row and '<progress value="3" max="10"' in row
    assert '<td class="run-loss">1.25</td>' in row
    assert 'href="/datasets/' in row and f'href="/models/{inputs.base.pk}/"' in row
    assert POLLING in page
    for kind in ("sft", "reward", "ppo"):
        assert f'href="/projects/{project.pk}/runs/new/{kind}/"' in page
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    body = fragment.content.decode()
    assert "<html" not in body and 'id="run-rows"' in body and POLLING in body
    assert "HX-Request" in fragment["Vary"]

    output = _model(project, "sft-run-1", kind="sft", parent=inputs.base)
    TrainingRun.objects.filter(pk=run.pk).update(output_model=output)
    Job.objects.filter(pk=run.job_id).update(progress=10)
    _finish(run)
    page = client.get(url).content.decode()
    assert POLLING not in page
    assert f'href="/models/{output.pk}/"' in page and "Succeeded" in page


def test_the_list_takes_the_same_queries_for_more_runs(project, inputs, client, alice):
    client.force_login(alice)
    url = f"/projects/{project.pk}/runs/"
    _run(project, inputs, created_by=alice)

    def count():
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        return len(queries)

    before = count()
    _run(project, inputs, kind="reward", sft_snapshot=inputs.demonstrations)
    _run(project, inputs, kind="ppo", created_by=alice)
    assert count() == before


# --- launch forms ------------------------------------------------------------------


def test_the_launch_form_shows_every_setting_grouped_with_its_default(project, inputs, client,
                                                                     alice):
    client.force_login(alice)
    page = client.get(f"/projects/{project.pk}/runs/new/sft/").content.decode()
    for setting in describe("sft"):
        assert f'id="id_{setting["name"]}"' in page, setting["name"]
    for legend in ("Inputs", "Model", "Data", "Training"):
        assert f"<legend>{legend}</legend>" in page
    assert 'name="learning_rate" value="2e-05"' in page
    assert 'name="max_length" value="1024"' in page
    assert "Peak learning rate of AdamW." in page and "Default: 2e-05." in page
    assert '<option value="true">' in page and '<option value="" selected>auto</option>' in page
    # Only built snapshots of the kind the run reads; only ready language models.
    assert "demos (#" in page and "still building" not in page and "ranks" not in page
    assert "tiny-base" in page and "tiny-sft" in page
    assert "tiny-rm" not in page and "old-base" not in page
    assert 'name="reward_model"' not in page and 'name="sft_snapshot"' not in page

    ppo = client.get(f"/projects/{project.pk}/runs/new/ppo/").content.decode()
    assert 'name="reward_model"' in ppo and 'name="sft_snapshot"' in ppo
    assert "ppo prompts" in ppo and 'name="kl_coef" value="0.02"' in ppo


def test_the_snapshot_in_the_query_is_chosen(project, inputs, client, alice):
    client.force_login(alice)
    url = f"/projects/{project.pk}/runs/new/sft/?snapshot={inputs.demonstrations.pk}"
    page = client.get(url).content.decode()
    assert f'<option value="{inputs.demonstrations.pk}" selected>' in page
    page = client.get(f"/projects/{project.pk}/runs/new/sft/?snapshot=nonsense")
    assert page.status_code == 200


def test_the_form_queues_a_run_with_only_the_settings_changed(project, inputs, client, erin):
    client.force_login(erin)
    response = client.post(f"/projects/{project.pk}/runs/new/sft/", launch_form(
        "sft", snapshot=inputs.demonstrations.pk, parent=inputs.base.pk,
        learning_rate="1e-4", max_steps=20, use_lora="true",
        lora_target_modules="q_proj, v_proj", bf16="false", seed=7))
    run = TrainingRun.objects.get(project=project)
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.config == {"learning_rate": 1e-4, "max_steps": 20, "use_lora": True,
                          "lora_target_modules": ["q_proj", "v_proj"], "bf16": False,
                          "seed": 7}
    assert run.seed == 7 and run.created_by == erin
    assert (run.kind, run.snapshot, run.parent) == ("sft", inputs.demonstrations, inputs.base)
    assert run.job.status == Job.Status.QUEUED

    client.post(f"/projects/{project.pk}/runs/new/sft/", launch_form(
        "sft", snapshot=inputs.demonstrations.pk, parent=inputs.base.pk))
    defaults = TrainingRun.objects.filter(project=project).first()
    assert defaults.pk != run.pk and defaults.config == {} and defaults.seed == 42


def test_invalid_settings_give_form_errors_and_keep_the_input(project, inputs, client, alice):
    client.force_login(alice)
    url = f"/projects/{project.pk}/runs/new/sft/"
    base = {"snapshot": inputs.demonstrations.pk, "parent": inputs.base.pk,
            "learning_rate": "3e-4"}
    # Not a number: the field says so.
    response = client.post(url, launch_form("sft", **base, lora_r="many"))
    page = response.content.decode()
    assert response.status_code == 200 and "Enter a whole number." in page
    # A number the config refuses: the service's reason, above the form.
    response = client.post(url, launch_form("sft", **base, lora_dropout="1.5"))
    page = response.content.decode()
    assert response.status_code == 200
    assert 'class="errorlist nonfield"' in page and "lora_dropout" in page
    assert 'name="learning_rate" value="3e-4"' in page  # nothing typed is lost
    assert 'name="lora_dropout" value="1.5"' in page
    # A required setting left empty.
    response = client.post(url, launch_form("sft", **base, max_length=""))
    assert "This field is required." in response.content.decode()
    # A snapshot of another kind is not a choice.
    response = client.post(url, launch_form("sft", **base | {"snapshot": inputs.rankings.pk}))
    assert "Select a valid choice." in response.content.decode()
    assert not TrainingRun.objects.filter(project=project).exists()


def test_a_ppo_run_needs_a_reward_model(project, inputs, client, alice):
    client.force_login(alice)
    url = f"/projects/{project.pk}/runs/new/ppo/"
    fields = {"snapshot": inputs.prompts.pk, "parent": inputs.sft_model.pk}
    response = client.post(url, launch_form("ppo", **fields))
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not TrainingRun.objects.filter(project=project).exists()
    # A language model is not a reward model.
    response = client.post(url, launch_form("ppo", **fields, reward_model=inputs.base.pk))
    assert "Select a valid choice." in response.content.decode()
    response = client.post(url, launch_form("ppo", **fields, reward_model=inputs.reward_model.pk,
                                            sft_snapshot=inputs.demonstrations.pk,
                                            kl_coef="0.05"))
    run = TrainingRun.objects.get(project=project)
    assert response.status_code == 302
    assert run.reward_model == inputs.reward_model and run.sft_snapshot == inputs.demonstrations
    assert run.config == {"kl_coef": 0.05}


def test_a_reward_run_takes_the_demonstrations_for_its_bias(project, inputs, client, alice):
    client.force_login(alice)
    response = client.post(f"/projects/{project.pk}/runs/new/reward/", launch_form(
        "reward", snapshot=inputs.rankings.pk, parent=inputs.sft_model.pk,
        sft_snapshot=inputs.demonstrations.pk, ranking="per_annotator"))
    assert response.status_code == 302
    run = TrainingRun.objects.get(project=project)
    assert run.sft_snapshot == inputs.demonstrations and run.reward_model is None
    assert run.config == {"ranking": "per_annotator"}


def test_a_model_archived_after_the_form_was_shown_is_refused(project, inputs, client, alice):
    client.force_login(alice)
    # Archived between the form's rendering and its submission.
    url = f"/projects/{project.pk}/runs/new/sft/"
    data = launch_form("sft", snapshot=inputs.demonstrations.pk, parent=inputs.base.pk)
    ModelVersion.objects.filter(pk=inputs.base.pk).update(status=ModelVersion.Status.ARCHIVED)
    response = client.post(url, data)
    assert response.status_code == 200 and "Select a valid choice." in response.content.decode()
    assert not TrainingRun.objects.filter(project=project).exists()


# --- the run page ------------------------------------------------------------------


def test_the_run_page_draws_the_charts_of_a_reward_run(project, inputs, client, alice):
    run = _run(project, inputs, kind="reward", sft_snapshot=inputs.demonstrations,
               config={"learning_rate": 1e-5})
    metrics = [{"step": s, "loss": 1.0 - s / 40} for s in range(1, 31)]
    metrics[9] |= {"eval_loss": 0.8, "eval_accuracy": 0.625}
    metrics[19] |= {"eval_loss": 0.7, "eval_accuracy": 0.75}
    log_metrics(run, metrics)
    Job.objects.filter(pk=run.job_id).update(progress=30, total=60)
    client.force_login(alice)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    loss = page[page.index('id="loss-chart"'):page.index('id="accuracy-chart"')]
    assert loss.count("<polyline") == 2 and "training loss" in loss
    assert "validation loss" in loss
    assert "The last 20 of 30 logged steps." in loss and "<td>0.25</td>" in loss  # step 30
    accuracy = page[page.index('id="accuracy-chart"'):]
    assert accuracy.count("<polyline") == 1 and "<td>0.75</td>" in accuracy
    assert "The last 2 of 2 logged steps." in accuracy
    assert 'id="reward-chart"' not in page
    # Inputs and every setting, defaults filled in.
    assert f'href="/datasets/{inputs.rankings.pk}/"' in page
    assert f'href="/datasets/{inputs.demonstrations.pk}/"' in page
    assert f'href="/models/{inputs.sft_model.pk}/"' in page
    for setting in describe("reward"):
        assert f'id="setting-{setting["name"]}"' in page
    changed = page[page.index('id="setting-learning_rate"'):]
    assert changed.startswith('id="setting-learning_rate" class="setting-changed"')
    assert '<td class="muted">consensus</td>' in page  # the ranking's default
    assert POLLING in page and 'id="run-cancel"' in page and 'id="run-resume"' not in page


def test_the_run_page_of_a_ppo_run_charts_reward_and_kl(project, inputs, client, alice):
    run = _run(project, inputs, kind="ppo")
    log_metrics(run, [
        {"step": 1, "reward_mean": -0.5, "kl": 0.0, "entropy": 2.1, "clipfrac": 0.1},
        {"step": 2, "reward_mean": 0.25, "kl": 0.02, "entropy": 2.0, "ptx_loss": 3.5},
    ])
    client.force_login(alice)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    for chart in ("loss-chart", "reward-chart", "kl-chart"):
        assert f'id="{chart}"' in page
    reward = page[page.index('id="reward-chart"'):page.index('id="kl-chart"')]
    assert "<polyline" in reward and "<td>-0.5</td>" in reward
    assert "No values logged yet." in page[:page.index('id="reward-chart"')]  # no loss
    latest = page[page.index('id="latest-values"'):]
    assert "<code>ptx_loss</code></td><td>2</td><td>3.5</td>" in latest
    assert f'href="/models/{inputs.reward_model.pk}/"' in page


def test_the_run_page_polls_while_active_and_stops_when_done(project, inputs, client, alice,
                                                              tmp_path):
    run = _run(project, inputs)
    client.force_login(alice)
    url = f"/runs/{run.pk}/"
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    body = fragment.content.decode()
    assert "<html" not in body and 'id="run-live"' in body and POLLING in body
    assert "HX-Request" in fragment["Vary"] and 'id="run-settings"' not in body
    assert "Recorded when the training process starts." in body

    output = _model(project, "sft-run", kind="sft", parent=inputs.base)
    TrainingRun.objects.filter(pk=run.pk).update(
        output_model=output, last_checkpoint="/m/runs/sft-1/checkpoints/checkpoint-6",
        provenance={"snapshot": "abc123", "seed": 42, "command": "python -m training.run 1",
                    "versions": {"torch": "2.9.0", "transformers": "4.57.1"}})
    _finish(run)
    body = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert POLLING not in body and 'id="run-cancel"' not in body
    assert 'id="run-resume"' not in body  # finished with a model: nothing to resume
    assert f'href="/models/{output.pk}/"' in body and "checkpoint-6" in body
    assert "<code>torch 2.9.0</code>" in body and "python -m training.run 1" in body


def test_a_lead_cancels_and_resumes_a_run(project, inputs, client, alice):
    run = _run(project, inputs)
    client.force_login(alice)
    url = f"/runs/{run.pk}/"
    assert client.get(f"{url}cancel/").status_code == 405
    response = client.post(f"{url}cancel/")
    assert response.status_code == 302 and response["Location"] == url
    run.job.refresh_from_db()
    assert run.job.status == Job.Status.CANCELLED
    page = client.get(url).content.decode()
    assert "Run cancelled." in page and 'id="run-resume"' in page and POLLING not in page

    response = client.post(f"{url}resume/")
    assert response.status_code == 302
    run.job.refresh_from_db()
    assert run.job.status == Job.Status.QUEUED
    page = client.get(url).content.decode()
    assert "Run queued again" in page and POLLING in page
    # Resuming an active run is refused, with the reason.
    client.post(f"{url}resume/")
    page = client.get(url).content.decode()
    assert "only a failed or cancelled run can be resumed" in page


def test_a_failed_run_shows_its_error_and_offers_resume(project, inputs, client, alice):
    run = _run(project, inputs)
    _finish(run, Job.Status.FAILED, error="the training process failed (exit status 1)")
    client.force_login(alice)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="run-error"' in page and "exit status 1" in page
    assert 'id="run-resume"' in page and 'id="run-cancel"' not in page


def test_the_log_tail_reads_only_the_end_of_the_training_log(project, inputs, client, alice,
                                                             tmp_path):
    run = _run(project, inputs)
    lines = [f"line {i:05d} " + "x" * 60 for i in range(1000)]
    (tmp_path / "train.log").write_text("\n".join(lines) + "\n")
    TrainingRun.objects.filter(pk=run.pk).update(output_dir=str(tmp_path))
    Job.objects.filter(pk=run.job_id).update(log="starting python -m training.run\n")
    client.force_login(alice)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    train_log = page[page.index('id="run-train-log"'):]
    train_log = train_log[:train_log.index("</pre>")]
    assert "line 00999" in train_log and "line 00000" not in train_log
    assert train_log.count("line ") < 130  # about 8 KB, from a whole line
    assert re.search(r'id="run-train-log">line \d{5} x', train_log)
    assert "starting python -m training.run" in page


def test_hostile_names_errors_and_logs_are_escaped(project, inputs, client, alice, tmp_path):
    ModelVersion.objects.filter(pk=inputs.base.pk).update(name=HOSTILE)
    DatasetSnapshot.objects.filter(pk=inputs.demonstrations.pk).update(name=HOSTILE)
    run = _run(project, inputs)
    (tmp_path / "train.log").write_text(f"Traceback\n{HOSTILE}\n")
    TrainingRun.objects.filter(pk=run.pk).update(
        output_dir=str(tmp_path),
        last_checkpoint=HOSTILE, provenance={"command": HOSTILE, "versions": {HOSTILE: HOSTILE}})
    log_metrics(run, [{"step": 1, "loss": 1.0, HOSTILE: 2.0}])
    _finish(run, Job.Status.FAILED, error=HOSTILE, log=HOSTILE)
    client.force_login(alice)
    for url in (f"/projects/{project.pk}/runs/", f"/runs/{run.pk}/",
                f"/projects/{project.pk}/runs/new/sft/", f"/models/{inputs.base.pk}/",
                f"/datasets/{inputs.demonstrations.pk}/"):
        page = client.get(url).content.decode()
        assert HOSTILE not in page, url
        assert ESCAPED in page, url


# --- links from the model and snapshot pages -----------------------------------------


def test_model_and_snapshot_pages_link_to_their_runs(project, inputs, client, alice):
    run = _run(project, inputs)
    ppo = _run(project, inputs, kind="ppo", sft_snapshot=inputs.demonstrations)
    output = _model(project, "made", kind="sft", parent=inputs.base,
                    training_run_ref=run.pk, snapshot_ref=inputs.demonstrations.pk)
    TrainingRun.objects.filter(pk=run.pk).update(output_model=output)
    client.force_login(alice)
    base = client.get(f"/models/{inputs.base.pk}/").content.decode()
    runs = base[base.index('id="model-training-runs"'):]
    assert f'href="/runs/{run.pk}/"' in runs and f'href="/runs/{ppo.pk}/"' not in runs
    made = client.get(f"/models/{output.pk}/").content.decode()
    assert f'<td id="made-by-run"><a href="/runs/{run.pk}/">' in made
    assert f'<td id="model-snapshot"><a href="/datasets/{inputs.demonstrations.pk}/">' in made
    reward = client.get(f"/models/{inputs.reward_model.pk}/").content.decode()
    assert f'href="/runs/{ppo.pk}/"' in reward[reward.index('id="model-training-runs"'):]

    snapshot = client.get(f"/datasets/{inputs.demonstrations.pk}/").content.decode()
    listed = snapshot[snapshot.index('id="snapshot-runs"'):]
    assert f'href="/runs/{run.pk}/"' in listed and f'href="/runs/{ppo.pk}/"' in listed
    assert "(as its demonstrations)" in listed
    assert (f'href="/projects/{project.pk}/runs/new/sft/?snapshot={inputs.demonstrations.pk}"'
            in listed)
    prompts = client.get(f"/datasets/{inputs.prompts.pk}/").content.decode()
    assert f"/runs/new/ppo/?snapshot={inputs.prompts.pk}" in prompts
    unbuilt = client.get(f"/datasets/{inputs.unbuilt.pk}/").content.decode()
    assert "/runs/new/" not in unbuilt


# --- line_chart ----------------------------------------------------------------------


def _xy(points: str) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in points.split()]


def test_line_chart_of_nothing_is_empty():
    assert line_chart([])["empty"]
    chart = line_chart([("loss", []), ("eval", [(1, None), (2, math.nan)])])
    assert chart["empty"] and chart["lines"] == []


def test_line_chart_places_points_inside_the_plot_and_shares_the_axes():
    chart = line_chart([("a", [(0, 0.0), (10, 1.0)]), ("b", [(5, 0.5), (10, 2.0)])],
                       width=200, height=100, pad=10)
    a, b = (_xy(line.points) for line in chart["lines"])
    assert a == [(20.0, 90.0), (190.0, 50.0)]
    assert b == [(105.0, 70.0), (190.0, 10.0)]
    assert (chart["x_min"], chart["x_max"], chart["y_min"], chart["y_max"]) == ("0", "10",
                                                                                "0", "2")
    assert [line.css for line in chart["lines"]] == ["line-0", "line-1"]


def test_line_chart_skips_missing_and_non_finite_values():
    chart = line_chart([("loss", [(1, 1.0), (2, None), (3, math.nan), (4, math.inf),
                                  (None, 2.0), (5, "3"), (6, True), (7, 0.5)])])
    (line,) = chart["lines"]
    assert line.count == 2 and len(_xy(line.points)) == 2
    assert chart["x_max"] == "7" and chart["y_max"] == "1"


def test_line_chart_draws_a_lone_point_as_a_dot_in_the_middle():
    chart = line_chart([("acc", [(3, 0.5)]), ("loss", [])], width=200, height=100, pad=10)
    lone, empty = chart["lines"]
    assert lone.points == "" and lone.dots == [(105.0, 50.0)]
    assert empty.count == 0 and empty.points == "" and empty.dots == []


def test_line_chart_draws_a_constant_series_across_the_middle():
    chart = line_chart([("kl", [(1, 0.0), (2, 0.0), (3, 0.0)])], width=200, height=100, pad=10)
    assert {y for _x, y in _xy(chart["lines"][0].points)} == {50.0}
    assert (chart["y_min"], chart["y_max"]) == ("-1", "1")
    chart = line_chart([("r", [(1, 4.0), (2, 4.0)])])
    assert (chart["y_min"], chart["y_max"]) == ("3.6", "4.4")


def test_line_chart_thins_long_series_and_keeps_the_last_point():
    points = [(step, float(step % 7)) for step in range(1, 5001)]
    (line,) = line_chart([("loss", points)], max_points=100)["lines"]
    placed = _xy(line.points)
    assert line.count == 100 and len(placed) == 100
    assert placed[-1][0] == 720 - 28  # the last step at the right edge
