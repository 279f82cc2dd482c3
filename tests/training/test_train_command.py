"""manage.py train: a run created and trained in the command's own process, or queued.

The end-to-end tests start the trainer process (`python -m training.run`), which reads
the run from the test database: PostgreSQL, with the rows committed.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from kombu.exceptions import OperationalError

from modelhub.models import Job
from modelhub.services import jobs
from modelhub.services.registry import model_register
from tests.training.helpers import demonstration_snapshot
from training.management.commands.train import latest_figures, setting_value
from training.models import TrainingRun


@pytest.fixture
def inputs(project, bob, run_roots, tiny_model):
    """Return the project's base model (the tiny one) and a built sft snapshot."""
    shutil.copytree(tiny_model, run_roots / "models" / "base")
    base = model_register(project=project, name="base", kind="base",
                          path=str(run_roots / "models" / "base"))
    return base, demonstration_snapshot(project, bob, 8)


def _args(project, base, snapshot, *extra):
    return ["sft", "--project", str(project.pk), "--snapshot", str(snapshot.pk),
            "--model", str(base.pk), *extra]


QUICK = ["--set", "max_steps=4", "--set", "learning_rate=3e-3", "--set", "logging_steps=1",
         "--set", "per_device_train_batch_size=4", "--set", "save_steps=2",
         "--set", "warmup_ratio=0"]


def test_set_values_are_json_when_they_parse():
    assert setting_value("1e-4") == 1e-4 and setting_value("null") is None
    assert setting_value("true") is True and setting_value('["q_proj"]') == ["q_proj"]
    assert setting_value("cosine") == "cosine" and setting_value("") == ""


def test_the_bar_shows_the_newest_loss_or_reward():
    assert latest_figures([]) == {}
    assert latest_figures([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.23456,
                                                      "learning_rate": 0.1}]) == {
        "loss": "1.235"}
    assert latest_figures([{"step": 1, "loss": 2.0}, {"step": 2, "epoch": 1.0}]) == {
        "loss": "2"}
    assert latest_figures([{"step": 3, "objective/scores": 0.5}]) == {"objective/scores": "0.5"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_trains_a_run_here_and_registers_its_model(project, inputs, child_database):
    base, snapshot = inputs
    out, err = StringIO(), StringIO()
    call_command("train", *_args(project, base, snapshot, *QUICK, "--seed", "3"),
                 stdout=out, stderr=err)
    run = TrainingRun.objects.select_related("job", "output_model").get(project=project)
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert (run.step, run.max_steps, run.seed) == (4, 4, 3)
    assert run.job.lease_owner.startswith("cli:")
    assert run.config["learning_rate"] == 3e-3 and run.config["warmup_ratio"] == 0
    model = run.output_model
    assert model.kind == "sft" and model.parent_id == base.pk
    assert out.getvalue().strip() == (f"Run {run.pk} succeeded: model {model.name} "
                                      f"(id {model.pk}) at {model.artifact_path}")
    assert "4/4" in err.getvalue() and "loss=" in err.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failed_run_is_a_command_error_with_its_reason(project, inputs, child_database):
    base, snapshot = inputs
    type(base).objects.filter(pk=base.pk).update(artifact_path="/nonexistent/model")
    with pytest.raises(CommandError) as error:
        call_command("train", *_args(project, base, snapshot, *QUICK),
                     stdout=StringIO(), stderr=StringIO())
    run = TrainingRun.objects.get(project=project)
    assert str(error.value).startswith(f"Run {run.pk} failed: RuntimeError: the training "
                                       f"process failed")
    assert "nonexistent" in str(error.value) and error.value.returncode == 1


def test_enqueue_only_creates_the_run(project, inputs):
    base, snapshot = inputs
    out = StringIO()
    call_command("train", *_args(project, base, snapshot, "--set", "max_steps=4",
                                 "--enqueue"), stdout=out, stderr=StringIO())
    run = TrainingRun.objects.get(project=project)
    assert out.getvalue().strip() == str(run.pk)
    assert (run.job.status, run.job.attempts, run.config) == ("queued", 0, {"max_steps": 4})


@pytest.mark.django_db(transaction=True)
def test_a_run_is_kept_when_the_broker_is_down(project, inputs, monkeypatch):
    def down(job):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(jobs, "job_enqueue", down)
    base, snapshot = inputs
    out, err = StringIO(), StringIO()
    call_command("train", *_args(project, base, snapshot, "--enqueue"), stdout=out,
                 stderr=err)
    run = TrainingRun.objects.get(project=project)
    assert out.getvalue().strip() == str(run.pk) and run.job.status == Job.Status.QUEUED
    assert "did not reach the broker" in err.getvalue()


def test_a_config_file_is_read_and_set_overrides_it(project, inputs, tmp_path):
    base, snapshot = inputs
    config = tmp_path / "sft.json"
    config.write_text('{"max_steps": 10, "learning_rate": 0.001}')
    call_command("train", *_args(project, base, snapshot, "--config", str(config),
                                 "--set", "max_steps=4", "--set", "bf16=null", "--enqueue"),
                 stdout=StringIO(), stderr=StringIO())
    assert TrainingRun.objects.get(project=project).config == {
        "max_steps": 4, "learning_rate": 0.001, "bf16": None}


@pytest.mark.parametrize("setting, named", [
    ("learning_rat=1", "learning_rat"),
    ("learning_rate=fast", "learning_rate"),
    ("max_steps", "max_steps"),
])
def test_a_bad_setting_is_a_command_error_naming_it(project, inputs, setting, named):
    base, snapshot = inputs
    with pytest.raises(CommandError, match=named):
        call_command("train", *_args(project, base, snapshot, "--set", setting, "--enqueue"),
                     stdout=StringIO(), stderr=StringIO())
    assert not TrainingRun.objects.filter(project=project).exists()


def test_inputs_are_checked_by_the_service(project, inputs, charlie, run_roots, tiny_model):
    from labeling.services.project import project_create

    base, snapshot = inputs
    with pytest.raises(CommandError, match="a reward run reads a rankings snapshot"):
        call_command("train", "reward", *_args(project, base, snapshot)[1:], "--enqueue",
                     stdout=StringIO(), stderr=StringIO())
    other = project_create(creator=charlie, name="Other")
    with pytest.raises(CommandError, match="must belong to this project"):
        call_command("train", *_args(other, base, snapshot, "--enqueue"),
                     stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="no snapshot 999999"):
        call_command("train", "sft", "--project", str(project.pk), "--snapshot", "999999",
                     "--model", str(base.pk), stdout=StringIO(), stderr=StringIO())


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ctrl_c_cancels_the_run(project, inputs, child_database):
    base, snapshot = inputs
    # A terminal's Ctrl-C: SIGINT to the command's whole process group, trainer included.
    command = subprocess.Popen(
        [sys.executable, "manage.py", "train",
         *_args(project, base, snapshot, *QUICK, "--set", "max_steps=400")],
        cwd=django_settings.BASE_DIR, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and command.poll() is None:
            run = TrainingRun.objects.filter(project=project).first()
            if run is not None and run.step >= 2:
                break
            time.sleep(0.2)
        os.killpg(command.pid, signal.SIGINT)
        _out, err = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    run = TrainingRun.objects.select_related("job").get(project=project)
    assert command.returncode == 130, err
    assert run.job.status == Job.Status.CANCELLED, run.job.error
    assert 2 <= run.step < 400 and f"Run {run.pk} cancelled" in err
