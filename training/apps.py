from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the snapshot builder and the run supervisor with modelhub's jobs.
        from training.services import runs, snapshots  # noqa: F401
