"""manage.py rundemo: the web server and a real Celery worker, on the embedded default.

The worker uses the broker configured in settings (kombu's filesystem transport by
default, which needs no server) and runs beat in-process for the lease sweeper.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the app on 127.0.0.1 with a Celery worker beside it (Ctrl+C stops both)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, **options):
        var = Path(settings.VAR_DIR)
        for folder in ("out", "processed", "control"):
            (var / "celery" / folder).mkdir(parents=True, exist_ok=True)
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "-Q", "default,gpu", "--concurrency", "1", "--loglevel", "INFO",
                "--beat", "--schedule", str(var / "celerybeat-schedule"),
                "--hostname", "demo-worker@%h",
            ],
            env={**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get(
                "DJANGO_SETTINGS_MODULE", "config.settings.local")},
        )
        url = f"http://127.0.0.1:{options['port']}/"
        self.stdout.write(self.style.SUCCESS(f"Laoshi is starting at {url}"))
        self.stdout.write(f"Celery worker pid {worker.pid} (broker {settings.CELERY_BROKER_URL})")
        try:
            call_command("runserver", f"127.0.0.1:{options['port']}", use_reloader=False)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()
