"""manage.py register_model: register a save_pretrained directory (or a Hub model)."""

from django.core.management.base import BaseCommand, CommandError

from labeling.models import Project
from modelhub.models import ModelVersion
from modelhub.services.registry import RegistrationError, model_register


class Command(BaseCommand):
    help = ("Register a model (safetensors weights, config and tokenizer) in a project; "
            "pickle-only checkpoints are refused.")

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--path", help="a save_pretrained directory on this machine")
        source.add_argument("--hub-id", help="a Hugging Face Hub id (needs network)")
        parser.add_argument("--project", type=int, required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--kind", choices=ModelVersion.Kind.values, default="base")
        parser.add_argument("--parent", type=int, help="the id of the model it derives from")

    def handle(self, *args, **options):
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"no project {options['project']}")
        parent = None
        if options["parent"]:
            parent = ModelVersion.objects.filter(pk=options["parent"]).first()
            if parent is None:
                raise CommandError(f"no model {options['parent']}")
        try:
            model = model_register(project=project, name=options["name"],
                                   kind=options["kind"], path=options["path"],
                                   hub_id=options["hub_id"], parent=parent)
        except RegistrationError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"Registered model {model.pk}: {model.name} ({model.kind}, "
                          f"{model.parameter_count:,} parameters) from {model.artifact_path}")
