from django.apps import AppConfig


class ModelhubConfig(AppConfig):
    name = "modelhub"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the job handlers (generation, evaluation) with the job mechanism.
        from modelhub.services import generation  # noqa: F401
