"""manage.py train: create a training run and run it in this process, or queue it.

    manage.py train sft --project 1 --snapshot 4 --model 2 --set max_steps=200 \\
        --set learning_rate=1e-4 --set bf16=null
    manage.py train reward --project 1 --snapshot 5 --model 7 --sft-snapshot 4 \\
        --config rm.json --seed 3
    manage.py train ppo --project 1 --snapshot 6 --model 7 --reward-model 8 --enqueue

The run is recorded like one started in the browser. Without --enqueue its job is
claimed and run here (a GPU node needs neither the web server nor a Celery worker),
with a progress bar; Ctrl-C cancels the run. Its message still goes to the broker: a
worker that gets it later finds the job taken and does nothing.
"""

import json
import signal
import threading
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from kombu.exceptions import OperationalError as BrokerError
from tqdm import tqdm

from labeling.models import Project
from modelhub.models import Job, ModelVersion
from modelhub.services.jobs import job_run, worker_name
from training.models import DatasetSnapshot, TrainingRun
from training.services.runs import RunError, run_cancel, run_create

POLL_SECONDS = 0.5
# Metrics shown beside the bar: the newest entry's figures whose names contain these.
FIGURE_WORDS = ("loss", "reward", "score")


def setting_value(text: str):
    """Return a --set value: its JSON value when it parses (1e-4, null, true, [..]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def latest_figures(metrics: list[dict], limit: int = 3) -> dict[str, str]:
    """Return the newest logged loss / reward / score figures, formatted for the bar."""
    for entry in reversed(metrics):
        figures = {key: f"{value:.4g}" for key, value in entry.items()
                   if any(word in key for word in FIGURE_WORDS)
                   and isinstance(value, int | float)}
        if figures:
            return dict(list(figures.items())[:limit])
    return {}


class Command(BaseCommand):
    help = ("Create a training run (sft, reward or ppo) and run it in this process, or "
            "queue it for the gpu workers with --enqueue.")

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=TrainingRun.Kind.values)
        parser.add_argument("--project", type=int, required=True)
        parser.add_argument("--snapshot", type=int, required=True,
                            help="the dataset snapshot to train on (sft: demonstrations, "
                                 "reward: rankings, ppo: prompts)")
        parser.add_argument("--model", type=int, required=True, help="the model to train")
        parser.add_argument("--reward-model", type=int, help="ppo: the reward model")
        parser.add_argument("--sft-snapshot", type=int,
                            help="an sft snapshot: a reward model's bias demonstrations, "
                                 "or PPO's pretraining mix")
        parser.add_argument("--config", type=Path,
                            help="a JSON file with an object of settings")
        parser.add_argument("--set", action="append", dest="set_values", default=[],
                            metavar="KEY=VALUE",
                            help="one setting (after --config); the value is read as JSON "
                                 "when it parses, else as text")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--enqueue", action="store_true",
                            help="only create the run and print its id; workers run it")

    def handle(self, *args, **options):
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"no project {options['project']}")
        # Looked up by id only: run_create checks that they belong to the project.
        inputs = {
            "snapshot": self._get(DatasetSnapshot, options["snapshot"], "snapshot"),
            "parent": self._get(ModelVersion, options["model"], "model"),
            "reward_model": self._get(ModelVersion, options["reward_model"], "model"),
            "sft_snapshot": self._get(DatasetSnapshot, options["sft_snapshot"], "snapshot"),
        }
        run = self._create(project, options, inputs)
        if options["enqueue"]:
            self.stderr.write(f"Queued {run.kind} run {run.pk}: a gpu worker will run it.")
            self.stdout.write(str(run.pk))
            return
        interrupted = self._run(run)
        run = TrainingRun.objects.select_related("job", "output_model").get(pk=run.pk)
        job = run.job
        if job.status == Job.Status.CANCELLED:
            raise CommandError(f"Run {run.pk} cancelled at step {run.step}.",
                               returncode=130 if interrupted else 1)
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"Run {run.pk} {job.status}: {job.error}")
        model = run.output_model
        self.stdout.write(f"Run {run.pk} succeeded: model {model.name} (id {model.pk}) at "
                          f"{model.artifact_path}")

    @staticmethod
    def _get(model, pk, noun):
        if pk is None:
            return None
        found = model.objects.filter(pk=pk).first()
        if found is None:
            raise CommandError(f"no {noun} {pk}")
        return found

    @staticmethod
    def _config(options) -> dict:
        config = {}
        if options["config"]:
            try:
                config = json.loads(options["config"].read_text())
            except (OSError, ValueError) as error:
                raise CommandError(f"--config {options['config']}: {error}") from error
            if not isinstance(config, dict):
                raise CommandError(f"--config {options['config']} must hold a JSON object "
                                   f"of settings")
        for item in options["set_values"]:
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise CommandError(f"--set takes KEY=VALUE, not {item!r}")
            config[key.strip()] = setting_value(value)
        return config

    def _create(self, project, options, inputs) -> TrainingRun:
        run = None
        try:
            # The job's message is sent when this block commits, after the run is saved:
            # a broker that is down then raises here, with the run already recorded.
            with transaction.atomic():
                run = run_create(project=project, kind=options["kind"],
                                 config=self._config(options), seed=options["seed"],
                                 **inputs)
        except RunError as error:
            raise CommandError(str(error)) from error
        except BrokerError as error:
            if run is None:
                raise
            then = ("the reconciler (celery beat) sends it again once the broker is up"
                    if options["enqueue"] else "running it here")
            self.stderr.write(f"Run {run.pk} is queued but its message did not reach the "
                              f"broker ({error}): {then}.")
        return run

    def _run(self, run: TrainingRun) -> bool:
        """Run the job in a thread and show its progress; return whether Ctrl-C cancelled it.

        Should a worker claim the job first (it got the message), follow that worker's run.
        """
        worker = f"cli:{worker_name()}"
        failure: list[BaseException] = []

        def work():
            # Ctrl-C is the main thread's to handle, by cancelling the run. Blocked here, it
            # is blocked in the trainer process the job starts from this thread too (a
            # child inherits the signal mask), which could otherwise die of the terminal's
            # SIGINT before the cancel reaches its worker, and fail the run.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                job_run(job_id=run.job_id, worker=worker)
            except BaseException as exc:  # re-raised below, in the command's thread
                failure.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=work, name=f"run-{run.pk}")
        thread.start()
        interrupted = following = False
        with tqdm(total=None, unit="step", desc=f"{run.kind} run {run.pk}",
                  file=self.stderr._out, dynamic_ncols=True) as bar:
            while True:
                try:
                    if thread.is_alive():
                        thread.join(POLL_SECONDS)
                    else:  # following another worker's run
                        time.sleep(POLL_SECONDS)
                    state = (TrainingRun.objects.select_related("job")
                             .only("latest", "job__status", "job__progress",
                                   "job__total", "job__lease_owner").get(pk=run.pk))
                    self._show(bar, state)
                    if thread.is_alive():
                        continue
                    if failure or not state.job.is_active:
                        break
                    if not following:
                        following = True
                        owner = state.job.lease_owner or "another worker"
                        bar.write(f"Run {run.pk} was claimed by {owner}: following it.")
                except KeyboardInterrupt:
                    if interrupted:
                        bar.write("Still stopping the run; wait a few seconds.")
                        continue
                    interrupted = True
                    bar.write(f"Cancelling run {run.pk}...")
                    run_cancel(run=run)
        if failure:
            raise failure[0]
        return interrupted

    @staticmethod
    def _show(bar, state: TrainingRun) -> None:
        if state.max_steps and bar.total != state.max_steps:
            # Training has begun: rate and time left count from here (and from the step a
            # resumed run starts at), not from the trainer process's start-up.
            bar.reset(total=state.max_steps)
            bar.initial = state.step
        bar.n = state.step
        bar.set_postfix(latest_figures([state.latest]), refresh=False)
        bar.refresh()
