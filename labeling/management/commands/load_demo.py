"""manage.py load_demo: the demo project, its prompts and the four demo accounts."""

import json
import os
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from labeling.models import Project, Role, Task
from labeling.services.assignment import assignment_create
from labeling.services.importing import prompts_import
from labeling.services.project import membership_add, project_create, write_prompt_tasks_create
from labeling.services.submission import annotation_submit

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo" / "demo_prompts.jsonl"
DEMO_NAME = "Laoshi demo: a helpful assistant"
ACCOUNTS = [("lead", Role.LEAD), ("annotator1", Role.ANNOTATOR),
            ("annotator2", Role.ANNOTATOR), ("engineer", Role.ENGINEER)]
GUIDELINES = """\
## What we want

You are helping to train an assistant that is **helpful**, **truthful** and **harmless**.

* **Helpful**: it does what the user asked, in the format asked, in the user's language;
  when the request is unclear it asks, rather than guessing wildly.
* **Truthful**: it does not make up facts. On closed QA, summaries and extraction, it uses
  only the given text.
* **Harmless**: it does not give dangerous advice, insult people or reveal private data.

## Ranking

Rank the responses from best (1) to worst. Give two responses the same rank only when
you truly cannot choose. Then rate each on 1-7 and tick every flag that applies.
When a truthful answer and a helpful one conflict, prefer the **truthful, harmless** one.

## Demonstrations

Write the answer you would be proud of: complete, accurate, well formatted, no padding.

演示项目同时包含中文和英文提示词：请用提示词所用的语言回答。
"""


class Command(BaseCommand):
    help = "Create the demo project, its prompts, tasks and the demo accounts (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true", help="delete and recreate the demo")

    def handle(self, *args, **options):
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
        users = self._accounts(password)
        existing = Project.objects.filter(name=DEMO_NAME).first()
        if existing and options["reset"]:
            existing.delete()
            existing = None
        if existing is None:
            project = self._project(users)
            self.stdout.write(self.style.SUCCESS(f"Demo project created: {project.name}"))
        else:
            project = existing
            self.stdout.write(f"Demo project already present: {project.name}")
        self.stdout.write(f"Demo accounts (password for all: {password})")
        for username, role in ACCOUNTS:
            self.stdout.write(f"  {username:<11} {role}")

    def _accounts(self, password):
        User = get_user_model()
        users = {}
        for username, _role in ACCOUNTS:
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.save()
            users[username] = user
        return users

    @transaction.atomic
    def _project(self, users):
        project = project_create(
            creator=users["lead"], name=DEMO_NAME, guidelines=GUIDELINES, k=4, overlap=1,
            agreement_sample_rate=0.25, agreement_overlap=2, gold_rate=0.0,
        )
        for username, role in ACCOUNTS[1:]:
            membership_add(project=project, username=username, role=role)
        lines = [json.loads(line) for line in DEMO_FILE.read_text("utf-8").splitlines() if line]
        demonstrations = {}
        records = []
        for number, line in enumerate(lines, start=1):
            record = {k: v for k, v in line.items() if k not in {"demonstration", "language"}}
            record["metadata"] = {"language": line.get("language", "en")}
            records.append((number, record, None))
            if line.get("demonstration"):
                demonstrations[line.get("prompt") or line["messages"][-1]["content"]] = (
                    line["demonstration"]
                )
        report = prompts_import(project=project, records=records)
        if not report.imported:
            raise RuntimeError(f"the demo file has bad lines: {report.errors}")
        # Some prompts come with a demonstration already written by annotator2.
        writer = users["annotator2"]
        for task in Task.objects.filter(project=project, kind=Task.Kind.DEMONSTRATE).select_related(
            "prompt", "project"
        ):
            text = demonstrations.get(task.prompt.display_text)
            if text:
                assignment = assignment_create(task=task, annotator=writer, project=project)
                annotation_submit(assignment=assignment, data={"text": text})
        write_prompt_tasks_create(project=project, count=10)
        return project
