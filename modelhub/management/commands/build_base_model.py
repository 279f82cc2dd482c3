"""manage.py build_base_model: the tiny built-in base model, trained offline on demo texts.

Trains a byte-level BPE tokenizer and a small GPT-2 on the demo project's English and
Chinese texts (a few minutes at most on 2 CPU cores), saves it with save_pretrained
under settings.MODEL_ROOT and registers it as a base model. Deterministic for a seed;
an existing build is reused unless --rebuild.
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from labeling.models import Project
from modelhub.ml.tiny import build_tiny_model, demo_texts
from modelhub.models import ModelVersion
from modelhub.services.registry import RegistrationError, model_register

NAME = "laoshi-tiny-base"


class Command(BaseCommand):
    help = "Build the tiny base model from the demo texts and register it in projects."

    def add_arguments(self, parser):
        parser.add_argument("--project", type=int, action="append",
                            help="register in this project (repeatable; default: all)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--steps", type=int, default=300)
        parser.add_argument("--max-seconds", type=float, default=180)
        parser.add_argument("--rebuild", action="store_true")

    def handle(self, *args, **options):
        out = Path(settings.MODEL_ROOT) / NAME
        if options["rebuild"] or not (out / "config.json").exists():
            self.stdout.write(f"Training {NAME} (at most {options['max_seconds']:.0f} s)...")
            info = build_tiny_model(out, demo_texts(), seed=options["seed"],
                                    steps=options["steps"],
                                    max_seconds=options["max_seconds"],
                                    overwrite=options["rebuild"])
            self.stdout.write(
                f"{info['parameter_count'] / 1e6:.1f} M parameters, {info['steps']} steps in "
                f"{info['seconds']:.0f} s, loss {info['loss_first']:.2f} -> "
                f"{info['loss_last']:.2f}: {out}")
        else:
            self.stdout.write(f"Reusing {out}")
        projects = Project.objects.all()
        if options["project"]:
            projects = projects.filter(pk__in=options["project"])
        for project in projects:
            if ModelVersion.objects.filter(project=project, name=NAME).exists():
                continue
            try:
                model = model_register(project=project, name=NAME,
                                       kind=ModelVersion.Kind.BASE, path=str(out))
            except RegistrationError as error:
                raise CommandError(str(error)) from error
            self.stdout.write(f"Registered model {model.pk} in project {project.name!r}")
