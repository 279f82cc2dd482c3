"""Training runs: a worker supervises a child process that trains, checkpoints, registers.

These start real child processes (`python -m training.run`), which read the run from
the test database: PostgreSQL, with the rows committed (transactional tests).
"""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from labeling.models import Prompt
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.project import project_update
from labeling.services.submission import annotation_submit
from modelhub.models import Job, ModelVersion
from modelhub.services.jobs import job_cancel, job_run
from modelhub.services.registry import model_register
from tests.conftest import rank_items
from tests.training.helpers import demonstration_snapshot
from training.checkpoints import read_marker
from training.models import TrainingRun
from training.services.runs import (
    RunError,
    run_cancel,
    run_create,
    run_resume,
    training_processes,
)
from training.services.snapshots import snapshot_create

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def child_env(child_database, run_roots):
    """Trainer processes on the test database, with model and snapshot roots of their own."""
    return run_roots


@pytest.fixture
def sft_inputs(child_env, project, bob, tiny_model):
    shutil.copytree(tiny_model, child_env / "models" / "base")
    base = model_register(project=project, name="base", kind="base",
                          path=str(child_env / "models" / "base"))
    snapshot = demonstration_snapshot(project, bob, 12)
    return base, snapshot


CONFIG = {"max_steps": 6, "learning_rate": 3e-3, "per_device_train_batch_size": 4,
          "logging_steps": 1, "save_steps": 2, "warmup_ratio": 0.0}


def test_an_sft_run_trains_in_a_child_process_and_registers_its_model(project, sft_inputs):
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG)
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert run.step == 6 and run.max_steps == 6
    losses = [m["loss"] for m in run.series() if "loss" in m]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    model = run.output_model
    assert model.kind == "sft" and model.parent_id == base.pk
    assert model.training_run_ref == run.pk and model.snapshot_ref == snapshot.pk
    assert [m.pk for m in model.lineage()] == [base.pk, model.pk]
    assert run.provenance["snapshot"] == snapshot.content_hash
    assert "transformers" in run.provenance["versions"]
    # Checkpoints are marked complete, last, with what made them.
    marker = read_marker(Path(run.last_checkpoint))
    assert marker["kind"] == "sft" and marker["step"] == 6
    assert marker["config"]["learning_rate"] == CONFIG["learning_rate"]


def test_a_crash_in_the_child_fails_the_run_and_the_worker_lives_on(project, sft_inputs):
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG)
    ModelVersion.objects.filter(pk=base.pk).update(artifact_path="/nonexistent/model")
    assert job_run(job_id=run.job_id, worker="w")  # returns: the worker is fine
    job = Job.objects.get(pk=run.job_id)
    assert job.status == Job.Status.FAILED
    assert "training process failed" in job.error and "nonexistent" in job.error


def test_cancel_terminates_the_child(project, sft_inputs):
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG | {"max_steps": 400, "save_steps": 1000})
    worker = _run_in_background(run, until=lambda: TrainingRun.objects.get(pk=run.pk).step >= 2)
    job_cancel(job=Job.objects.get(pk=run.job_id))
    worker.join(60)
    assert not worker.is_alive()
    job = Job.objects.get(pk=run.job_id)
    assert job.status == Job.Status.CANCELLED
    assert TrainingRun.objects.get(pk=run.pk).step < 400


def test_a_run_resumes_from_its_last_complete_checkpoint(project, sft_inputs):
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG)
    # A first attempt that got to step 4 and died: its checkpoint is what remains.
    first = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                       config=CONFIG | {"max_steps": 4})
    job_run(job_id=first.job_id, worker="w")
    first.refresh_from_db()
    checkpoints = os.path.join(first.output_dir, "checkpoints")
    os.makedirs(os.path.join(run.output_dir, "checkpoints"))
    os.rename(os.path.join(checkpoints, "checkpoint-4"),
              os.path.join(run.output_dir, "checkpoints", "checkpoint-4"))
    # A half-written later checkpoint (no completion marker) must be ignored.
    os.makedirs(os.path.join(run.output_dir, "checkpoints", "checkpoint-5"))
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert run.last_checkpoint.endswith("checkpoint-6") and run.step == 6
    steps = [m["step"] for m in run.series() if "loss" in m]
    assert min(steps) == 5 and max(steps) == 6  # continued from 4, not from 0


def test_runs_check_their_inputs(project, sft_inputs):
    base, snapshot = sft_inputs
    with pytest.raises(RunError, match="reads a rankings snapshot"):
        run_create(project=project, kind="reward", snapshot=snapshot, parent=base)
    with pytest.raises(RunError, match="invalid sft config"):
        run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                   config={"learning_rate": -1})
    with pytest.raises(RunError, match="output_dir come from the run's inputs"):
        run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                   config={"output_dir": "/etc"})
    with pytest.raises(RunError, match="unknown setting"):
        run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                   config={"learning_rat": 1e-4})
    with pytest.raises(RunError, match="only PPO runs take a reward model"):
        run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                   reward_model=base)
    with pytest.raises(RunError, match="an SFT run reads one snapshot"):
        run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                   sft_snapshot=snapshot)


def _run_in_background(run, until) -> threading.Thread:
    """Start the run's job in a thread (a worker) and wait until ``until()`` holds."""
    worker = threading.Thread(target=lambda: (job_run(job_id=run.job_id, worker="w"),
                                              connection.close()))
    worker.start()
    deadline = time.monotonic() + 120
    while not until() and time.monotonic() < deadline:
        time.sleep(0.1)
    return worker


def _checkpoint_step(run) -> int:
    """Return the step of the run's last checkpoint (0 before the first)."""
    path = TrainingRun.objects.get(pk=run.pk).last_checkpoint
    return int(path.rsplit("-", 1)[-1]) if path else 0


def _trainer_pid(run_id: int) -> int | None:
    """Return the pid of the run's training process (from /proc), if it is running."""
    wanted = ["-m", "training.run", str(run_id)]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                argv = stream.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(argv[i:i + 3] == wanted for i in range(len(argv))):
            return int(entry)
    return None


def test_a_killed_trainer_fails_the_run_which_resumes_from_its_checkpoint(project, sft_inputs):
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG | {"max_steps": 400, "save_steps": 2})
    worker = _run_in_background(run, until=lambda: _checkpoint_step(run) >= 4)
    os.kill(_trainer_pid(run.pk), signal.SIGKILL)  # as the kernel's OOM killer would
    worker.join(60)
    run.refresh_from_db()
    assert run.job.status == Job.Status.FAILED
    assert "killed by signal 9" in run.job.error
    killed_at = run.step
    assert killed_at >= 4

    TrainingRun.objects.filter(pk=run.pk).update(config=CONFIG | {"max_steps": killed_at + 3,
                                                                  "save_steps": 2})
    run_resume(run=run)
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    checkpoint = int(run.provenance.get("resumed_from", "checkpoint-0").split("-")[-1])
    steps = [m["step"] for m in run.series() if "loss" in m]
    # Continuous: every step once, those after the checkpoint logged by the second attempt.
    assert steps == list(range(1, killed_at + 4))
    assert checkpoint >= 4 and checkpoint % 2 == 0


def test_ppo_runs_need_a_reward_model_and_take_an_sft_snapshot(project, sft_inputs,
                                                               child_env):
    base, demonstrations = sft_inputs
    prompts = snapshot_create(project=project, kind="prompts")
    job_run(job_id=prompts.job_id, worker="w")
    prompts.refresh_from_db()
    with pytest.raises(RunError, match="needs a reward model"):
        run_create(project=project, kind="ppo", snapshot=prompts, parent=base)
    with pytest.raises(RunError, match="is a base model, not a reward model"):
        run_create(project=project, kind="ppo", snapshot=prompts, parent=base,
                   reward_model=base)
    reward = ModelVersion.objects.create(project=project, name="rm", kind="reward",
                                         artifact_path=base.artifact_path)
    with pytest.raises(RunError, match="not a reward model"):
        run_create(project=project, kind="ppo", snapshot=prompts, parent=reward,
                   reward_model=reward)
    with pytest.raises(RunError, match="must be an sft snapshot, not prompts"):
        run_create(project=project, kind="ppo", snapshot=prompts, parent=base,
                   reward_model=reward, sft_snapshot=prompts)
    with pytest.raises(RunError, match="invalid ppo config: mini_batch_prompts"):
        run_create(project=project, kind="ppo", snapshot=prompts, parent=base,
                   reward_model=reward, config={"rollout_prompts": 6, "mini_batch_prompts": 4})
    run = run_create(project=project, kind="ppo", snapshot=prompts, parent=base,
                     reward_model=reward, sft_snapshot=demonstrations, config={"kl_coef": 0.1})
    assert run.reward_model == reward and run.sft_snapshot == demonstrations


def test_a_cancelled_run_resumes_from_its_checkpoint(project, sft_inputs):
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG | {"max_steps": 400, "save_steps": 2})
    with pytest.raises(RunError, match="only a failed or cancelled run"):
        run_resume(run=run)
    worker = _run_in_background(run, until=lambda: _checkpoint_step(run) >= 4)
    run_cancel(run=run)
    worker.join(60)
    run.refresh_from_db()
    assert run.job.status == Job.Status.CANCELLED
    stopped_at = run.step

    # Resumed with a shorter horizon so that it ends soon: from the checkpoint, not 0.
    TrainingRun.objects.filter(pk=run.pk).update(config=CONFIG | {"max_steps": stopped_at + 2,
                                                                  "save_steps": 2})
    run_resume(run=run)
    assert run.job.status == Job.Status.QUEUED and not run.job.cancel_requested
    assert "queued again" in run.job.log
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert run.step == stopped_at + 2 and run.output_model is not None
    steps = [m["step"] for m in run.series() if "loss" in m]
    assert steps == sorted(set(steps)) and steps[0] == 1
    with pytest.raises(RunError, match="finished and registered"):
        run_resume(run=run)


def test_a_reward_run_trains_on_a_rankings_snapshot_and_registers_a_reward_model(
        project, child_env, tiny_model, bob, dana):
    shutil.copytree(tiny_model, child_env / "models" / "sft")
    sft = model_register(project=project, name="sft", kind="sft",
                         path=str(child_env / "models" / "sft"))
    project_update(project=project, overlap=1)
    prompts_import(project=project, records=records_from_items(rank_items(6)))
    for _ in range(6):
        a = assignment_claim_next(project=project, annotator=bob)
        annotation_submit(assignment=a, data={"ranking": [
            {"completion": c, "rank": i + 1, "rating": 7 - i}
            for i, c in enumerate(sorted(a.display_order))]})
    Prompt.objects.filter(project=project).update(split="train")
    snapshot = snapshot_create(project=project, kind="rankings")
    job_run(job_id=snapshot.job_id, worker="w")
    snapshot.refresh_from_db()
    run = run_create(project=project, kind="reward", snapshot=snapshot, parent=sft, config={
        "max_steps": 4, "per_device_prompts": 2, "learning_rate": 1e-3, "logging_steps": 1,
        "save_steps": 2, "max_length": 64})
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    model = run.output_model
    assert model.kind == "reward" and model.parent_id == sft.pk and run.step == 4
    assert any("loss" in m for m in run.series())


def test_an_sft_run_trains_in_two_processes_with_ddp(project, sft_inputs, settings):
    # One process per GPU on a GPU node; here two CPU processes (gloo) stand in for them.
    settings.TRAINING_PROCESSES = "2"
    base, snapshot = sft_inputs
    run = run_create(project=project, kind="sft", snapshot=snapshot, parent=base,
                     config=CONFIG)
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert "torch.distributed.run --standalone --nproc_per_node=2" in run.job.log
    assert run.provenance["processes"] == 2
    assert run.step == 6 and [m["step"] for m in run.series() if "loss" in m] == list(
        range(1, 7))
    assert run.output_model is not None and read_marker(Path(run.last_checkpoint))["step"] == 6
    settings.TRAINING_PROCESSES = "many"
    with pytest.raises(RuntimeError, match="LAOSHI_TRAINING_PROCESSES"):
        training_processes("sft")


def test_a_ppo_run_trains_in_two_processes_with_ddp(project, sft_inputs, settings, child_env,
                                                    tiny_model):
    from transformers import AutoTokenizer

    from training.reward_trainer import load_reward_model

    settings.TRAINING_PROCESSES = "2"
    base, demonstrations = sft_inputs
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    load_reward_model(str(tiny_model), tokenizer).save_pretrained(child_env / "models" / "rm")
    tokenizer.save_pretrained(child_env / "models" / "rm")
    reward = model_register(project=project, name="rm", kind="reward",
                            path=str(child_env / "models" / "rm"))
    prompts = snapshot_create(project=project, kind="prompts")
    job_run(job_id=prompts.job_id, worker="w")
    prompts.refresh_from_db()
    run = run_create(project=project, kind="ppo", snapshot=prompts, parent=base,
                     reward_model=reward, sft_snapshot=demonstrations, config={
                         "max_steps": 3, "rollout_prompts": 4, "mini_batch_prompts": 2,
                         "response_length": 8, "save_steps": 2, "ptx_batch_size": 2,
                         "ptx_length": 32, "learning_rate": 1e-4})
    assert job_run(job_id=run.job_id, worker="w")
    run.refresh_from_db()
    assert run.job.status == Job.Status.SUCCEEDED, run.job.error
    assert run.provenance["processes"] == 2
    assert [m["step"] for m in run.series()] == [1, 2, 3]
    # Both processes' rollouts are in the figures: 2 x 4 responses per step.
    assert all(m["episodes"] == step * 8 for step, m in enumerate(run.series(), start=1))
    assert read_marker(Path(run.last_checkpoint))["step"] == 2
    assert run.output_model.kind == "policy"
