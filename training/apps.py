from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the snapshot builder with modelhub's job mechanism.
        from training.services import snapshots  # noqa: F401
