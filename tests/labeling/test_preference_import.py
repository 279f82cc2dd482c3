import gzip
import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from labeling.agreement import ranks_of
from labeling.models import Annotation, Assignment, Completion, Prompt, Task
from labeling.ranking import pairwise_preferences
from labeling.services.importing import records_from_items
from labeling.services.preference_import import preferences_import, preferences_import_file

DATA = Path(__file__).parent / "data"


def jsonl(*records) -> io.BytesIO:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    return io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))


def run(project, data, fmt="trl", source="hh", **options):
    return preferences_import_file(project=project, file=data, fmt=fmt, source=source,
                                   **options)


def run_items(project, items, fmt="trl", source="hh", **options):
    return preferences_import(project=project, records=records_from_items(items), fmt=fmt,
                              source=source, **options)


def pair(prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected} | extra


def stated_pairs(project) -> set[tuple[str, str, str]]:
    """Return (prompt, chosen, rejected) texts as a per-annotator pairs export reads them."""
    texts = dict(Completion.objects.filter(prompt__project=project).values_list("id", "text"))
    pairs = set()
    for annotation in Annotation.objects.filter(project=project).select_related("task__prompt"):
        prompt = annotation.task.prompt
        shown = prompt.messages[-1]["content"] if prompt.messages else prompt.text
        for better, worse in pairwise_preferences(ranks_of(annotation.ranking)):
            pairs.add((shown, texts[better], texts[worse]))
    return pairs


def ranks_by_text(annotation) -> dict[str, int]:
    texts = dict(Completion.objects.filter(
        pk__in=[e["completion"] for e in annotation.ranking]).values_list("id", "text"))
    return {texts[e["completion"]]: e["rank"] for e in annotation.ranking}


def test_it_imports_a_trl_file_as_prompts_responses_and_ranked_tasks(project):
    with open(DATA / "trl_pairs.jsonl", "rb") as handle:
        report = run(project, handle)
    assert report.as_dict() == {
        "added": 4, "duplicates": 0, "capped": 0, "tasks_created": 4, "lines": 5,
        "bad_lines": 0, "imported": True, "errors": [], "completions": 9, "preferences": 5,
        "no_preferences": 0,
    }
    assert stated_pairs(project) == {
        ("How do I boil an egg?",
         "Put it in boiling water for 8 minutes, then cool it in cold water.",
         "Eggs cannot be boiled."),
        ("How do I boil an egg?",
         "Put it in boiling water for 8 minutes, then cool it in cold water.",
         "Microwave it whole for five minutes."),
        ("Name a prime number.", "7", "8"),
        ("Capital of France?", "Paris.", "France has no capital."),
        ("Say hi in Spanish.", "Hola.", "Bonjour."),
    }
    assert set(Prompt.objects.values_list("source", flat=True)) == {Prompt.Source.IMPORTED}
    assert set(Completion.objects.values_list("source", "generator")) == {
        (Completion.Source.IMPORTED, "imported:hh")}
    assert not Task.objects.filter(status=Task.Status.OPEN).exists()
    assert not Task.objects.exclude(kind=Task.Kind.RANK).exists()

    chat = Prompt.objects.get(messages__isnull=False, metadata__preferences__0__id="hh-4")
    assert chat.messages == [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Capital of France?"}]
    implicit = Prompt.objects.get(metadata__preferences__0__id="hh-5")
    assert implicit.messages == [{"role": "user", "content": "Say hi in Spanish."}]
    assert implicit.category == "chat"


def test_lines_with_the_same_prompt_share_one_prompt_task_and_response(project):
    report = run_items(project, [
        pair("How do I boil an egg?", "Boil it 8 minutes.", "You cannot.", id=1, margin=2.5),
        pair("Something else", "yes", "no"),
        pair("how do I  boil an EGG?", "boil it 8 minutes.", "Microwave it.", id=2),
    ])
    assert report.added == 2 and report.preferences == 3 and report.completions == 5
    prompt = Prompt.objects.get(text="How do I boil an egg?")
    task = Task.objects.get(prompt=prompt)
    assert list(task.task_completions.values_list("completion__text", flat=True)) == [
        "Boil it 8 minutes.", "You cannot.", "Microwave it."]
    assert (task.status, task.required_annotations, task.assigned_count,
            task.submitted_count) == (Task.Status.COMPLETE, 2, 2, 2)
    first, second = Annotation.objects.filter(task=task).order_by("id")
    # One annotation a line, each ranking only its own pair, each by its own imported user.
    assert ranks_by_text(first) == {"Boil it 8 minutes.": 1, "You cannot.": 2}
    assert ranks_by_text(second) == {"Boil it 8 minutes.": 1, "Microwave it.": 2}
    assert [a.annotator.username for a in (first, second)] == ["imported:hh:1", "imported:hh:2"]
    assert first.ranking[0] == {"completion": first.ranking[0]["completion"], "rank": 1,
                                "rating": None, "flags": []}
    assert (first.responses, first.flagged_responses, first.position_rho) == (2, 0, None)
    assignment = first.assignment
    assert assignment.state == Assignment.State.SUBMITTED and assignment.annotator_id == \
        first.annotator_id
    assert assignment.display_order == [e["completion"] for e in first.ranking]
    assert prompt.metadata == {"source": "hh", "format": "trl", "preferences": [
        {"line": 1, "id": 1, "margin": 2.5, "annotation": first.pk},
        {"line": 3, "id": 2, "annotation": second.pk},
    ]}
    params = Completion.objects.get(text="Boil it 8 minutes.").generation_params
    assert params == {"source": "hh", "format": "trl", "line": 1, "id": 1}
    imported = get_user_model().objects.get(username="imported:hh:2")
    assert not imported.is_active and not imported.has_usable_password()
    assert not imported.memberships.exists()


def test_it_keeps_contradicting_pairs_and_drops_repeated_ones(project):
    report = run_items(project, [
        pair("p", "a", "b"), pair("p", "b", "a"), pair("p", "a", "b"), pair("p", "a", "c"),
    ])
    assert report.preferences == 3 and report.duplicates == 1
    assert stated_pairs(project) == {("p", "a", "b"), ("p", "b", "a"), ("p", "a", "c")}


def test_it_imports_oasst_trees_with_deeper_turns_as_chat_prompts(project):
    with open(DATA / "oasst_trees.jsonl", "rb") as handle:
        report = run(project, handle, fmt="oasst", source="oasst1")
    assert report.imported, report.errors
    assert (report.added, report.tasks_created, report.completions, report.preferences,
            report.no_preferences) == (2, 2, 6, 2, 1)

    root = Prompt.objects.get(metadata__preferences__0__message_id="t1-p")
    assert root.messages == [{"role": "user", "content": "What is a good name for a cat?"}]
    annotation = Annotation.objects.get(task__prompt=root)
    # rank + 1; the unranked reply is left out of the task.
    assert ranks_by_text(annotation) == {
        "Try Miso, Pepper or Luna.": 1, "Whiskers is a classic.": 2, "Cat.": 3}
    assert root.tasks.get().completions.count() == 3
    assert root.metadata["preferences"] == [
        {"line": 1, "message_tree_id": "t1", "message_id": "t1-p",
         "annotation": annotation.pk}]
    assert Completion.objects.get(text="Cat.").generation_params == {
        "source": "oasst1", "format": "oasst", "message_tree_id": "t1", "line": 1,
        "message_id": "t1-a2"}

    deeper = Prompt.objects.get(metadata__preferences__0__message_id="t1-p2")
    assert deeper.category == "chat" and deeper.messages == [
        {"role": "user", "content": "What is a good name for a cat?"},
        {"role": "assistant", "content": "Try Miso, Pepper or Luna."},
        {"role": "user", "content": "Which of those suits a black cat?"},
    ]
    # Equal ranks tie.
    assert ranks_by_text(Annotation.objects.get(task__prompt=deeper)) == {
        "Luna, after the night sky.": 1, "Pepper suits a black cat.": 2,
        "Miso, because why not.": 2}
    # A conversation's prompts stay in one split, by the user who started it.
    assert {(p.external_user_id, p.split) for p in (root, deeper)} == {
        ("starter-1", root.split)}


def _tree(*replies, text="Question?", role="prompter"):
    return {"message_tree_id": "t", "prompt": {"message_id": "m0", "role": role, "text": text,
                                              "replies": list(replies)}}


def _reply(mid, text, rank, role="assistant", **extra):
    return {"message_id": mid, "role": role, "text": text, "rank": rank} | extra


def test_oasst_ranks_are_made_dense_and_deleted_replies_left_out(project):
    report = run_items(project, [_tree(
        _reply("a", "first", 0), _reply("b", "third", 4), _reply("c", "gone", 1, deleted=True),
        _reply("d", "second", 2), _reply("e", "unranked", None))], fmt="oasst")
    assert report.imported and report.preferences == 1
    assert ranks_by_text(Annotation.objects.get()) == {"first": 1, "second": 2, "third": 3}


def test_it_rejects_the_whole_file_and_reports_every_bad_trl_line(project):
    report = run(project, jsonl(
        pair("fine", "a", "b"),
        "{not json",
        {"prompt": "no rejected", "chosen": "a"},
        pair("same", "Same answer", "same  answer"),
        pair("", "a", "b"),
        pair("empty", "  ", "b"),
        pair(42, "a", "b"),
        pair("margin", "a", "b", margin="big"),
        {"chosen": "a b", "rejected": "a c"},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other q"},
                      {"role": "assistant", "content": "b"}]},
        pair([{"role": "user", "content": "q"}], [{"role": "user", "content": "q"}], "b"),
        pair("q", [{"role": "user", "content": "not q"}, {"role": "assistant", "content": "a"}],
             "b"),
        pair("fine too", "c", "d"),
    ))
    assert not report.imported
    errors = {e["line"]: e["message"] for e in report.errors}
    assert list(errors) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "not valid JSON" in errors[2]
    assert "missing 'rejected'" in errors[3]
    assert "same response" in errors[4]
    assert "'prompt' must be non-empty text" in errors[5]
    assert "'chosen' has no text" in errors[6]
    assert "'prompt' must be text or a list of messages" in errors[7]
    assert "'margin' must be a number" in errors[8]
    assert "conversations" in errors[9]
    assert "same conversation up to a user message" in errors[10]
    assert "end with one assistant message" in errors[11]
    assert "repeat the prompt" in errors[12]
    assert report.preferences == report.added == 0
    assert not Prompt.objects.exists() and not Annotation.objects.exists()
    assert not get_user_model().objects.filter(username__startswith="imported:").exists()


def test_it_reports_invalid_tree_shapes_with_line_numbers(project):
    report = run_items(project, [
        _tree(_reply("a", "x", 0), _reply("b", "y", 1)),
        {"message_tree_id": "t", "prompt": "not a message"},
        _tree(_reply("a", "x", 0), role="assistant"),
        _tree(_reply("a", "x", 0), _reply("b", "y", 1, role="prompter")),
        _tree(_reply("a", "x", 0), _reply("b", "", 1)),
        _tree(_reply("a", "x", 0), _reply("b", "y", -1)),
        _tree(_reply("a", "x", 0), _reply("b", "X", 1)),
        _tree(*[_reply(f"r{i}", f"reply {i}", i) for i in range(10)]),
        _tree(_reply("a", "x", 0, replies="nope")),
    ], fmt="oasst")
    assert not report.imported
    errors = {e["line"]: e["message"] for e in report.errors}
    assert list(errors) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "first message" in errors[2]
    assert "must come from the prompter" in errors[3]
    assert "message b: a reply to a prompter message must come from the assistant" in errors[4]
    assert "message b has no text" in errors[5]
    assert "'rank' must be a whole number" in errors[6]
    assert "message b repeats the text of message a" in errors[7]
    assert "10 ranked replies" in errors[8]
    assert "'replies' must be a list" in errors[9]
    assert not Prompt.objects.exists()


def test_it_can_skip_bad_lines_when_asked(project):
    report = run(project, jsonl(pair("good", "a", "b"), "{bad", pair("also good", "c", "d")),
                 skip_bad_lines=True)
    assert report.imported and report.preferences == 2 and report.bad_lines == 1
    assert report.errors == [{"line": 2, "message": report.errors[0]["message"]}]
    assert Annotation.objects.count() == 2


def test_a_tenth_response_for_one_prompt_is_an_error_for_its_line(project):
    lines = [pair("p", f"answer {i}", f"answer {i + 1}") for i in range(0, 8)]
    lines.append(pair("P ", "answer 0", "answer 9"))  # the tenth different response
    lines.append(pair("p", "answer 3", "answer 7"))  # still fine
    report = run_items(project, lines)
    assert not report.imported
    assert [e["line"] for e in report.errors] == [9]
    assert "would have 10 different responses" in report.errors[0]["message"]

    skipped = run_items(project, lines, skip_bad_lines=True)
    assert skipped.imported and skipped.preferences == 9
    task = Task.objects.get()
    assert task.completions.count() == 9 and task.submitted_count == 9


def test_it_merges_prompts_across_batches(project, settings):
    settings.LAOSHI_IMPORT_BATCH_SIZE = 2
    lines = [pair(f"prompt {i % 3}", f"good {i % 3}", f"bad {i}") for i in range(7)]
    report = run_items(project, lines)
    assert report.imported and report.added == 3 and report.preferences == 7
    assert report.completions == 3 + 7
    counts = dict(Task.objects.values_list("prompt__text", "submitted_count"))
    assert counts == {"prompt 0": 3, "prompt 1": 2, "prompt 2": 2}
    assert stated_pairs(project) == {(f"prompt {i % 3}", f"good {i % 3}", f"bad {i}")
                                     for i in range(7)}
    task = Task.objects.get(prompt__text="prompt 0")
    assert list(task.task_completions.values_list("position", "completion__text")) == [
        (0, "good 0"), (1, "bad 0"), (2, "bad 3"), (3, "bad 6")]


def test_it_writes_a_batch_in_a_fixed_number_of_queries(project, django_assert_max_num_queries):
    lines = [pair(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(60)]
    with django_assert_max_num_queries(20):
        report = run_items(project, lines)
    assert report.preferences == 60


def test_importing_the_same_file_twice_adds_nothing(project):
    items = [pair("one", "a", "b"), pair("two", "c", "d")]
    run_items(project, items)
    again = run_items(project, items + [pair("three", "e", "f")])
    assert again.imported and again.duplicates == 2 and again.preferences == 1
    assert Annotation.objects.count() == 3
    # The imported users are reused, not made again.
    assert get_user_model().objects.filter(username__startswith="imported:hh:").count() == 1


def test_a_given_annotator_records_one_preference_per_prompt(project, bob):
    report = run_items(project, [pair("p", "a", "b"), pair("q", "a", "b")], annotator=bob)
    assert report.imported and set(Annotation.objects.values_list("annotator", flat=True)) == {
        bob.pk}
    clash = run_items(project, [pair("r", "a", "b"), pair("r", "a", "c")], annotator=bob)
    assert not clash.imported and clash.errors[0]["line"] == 2
    assert "already has a preference from bob" in clash.errors[0]["message"]


def test_it_refuses_an_unknown_format_or_a_bad_source(project):
    with pytest.raises(ValueError, match="unknown format"):
        run_items(project, [], fmt="csv")
    with pytest.raises(ValueError, match="source"):
        run_items(project, [], source="has spaces")


def test_the_command_imports_a_file_and_prints_the_report(project):
    out = io.StringIO()
    call_command("import_preferences", str(DATA / "oasst_trees.jsonl"), project=project.pk,
                 fmt="oasst", source="oasst1", stdout=out)
    assert "2 preferences imported: 2 prompts, 6 responses, 2 rank tasks" in out.getvalue()
    assert "1 trees without ranked replies" in out.getvalue()


def test_the_command_reads_a_gzipped_file(project, tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(gzip.compress((DATA / "trl_pairs.jsonl").read_bytes()))
    out = io.StringIO()
    call_command("import_preferences", str(path), project=project.pk, fmt="trl",
                 source="hh", stdout=out)
    assert "5 preferences imported" in out.getvalue()


def test_the_command_reports_bad_lines_and_imports_nothing(project, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p"}\n')
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_preferences", str(path), "--project", str(project.pk),
                     "--format", "trl", "--source", "mine", stderr=err)
    assert "line 2: missing 'chosen'" in err.getvalue()
    assert not Prompt.objects.exists()
