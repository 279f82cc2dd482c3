import io
import json

import pytest

from labeling.models import Completion, Prompt, Task
from labeling.services.importing import (
    prompts_import,
    prompts_import_file,
    records_from_items,
)
from labeling.text import split_for


def jsonl(*records) -> io.BytesIO:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    return io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))


def run(project, data: bytes | io.BytesIO, name="prompts.jsonl", **options):
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    return prompts_import_file(project=project, file=stream, file_name=name, **options)


def test_it_imports_prompts_chats_and_ranking_tasks(project):
    report = run(
        project,
        jsonl(
            {"prompt": "Write a haiku about autumn", "category": "generation", "user_id": "u1"},
            {"messages": [{"role": "user", "content": "你好，帮我写一封请假邮件"}],
             "category": "chat", "user_id": "u2", "metadata": {"lang": "zh"}},
            {"prompt": "Which is better?", "completions": [
                {"text": "one", "model": "a"}, {"text": "two", "model": "b"},
                {"text": "three", "model": "a"}, {"text": "four", "model": "b"}]},
        ),
    )
    assert report.as_dict() == {
        "added": 3, "duplicates": 0, "capped": 0, "tasks_created": 3, "lines": 3,
        "bad_lines": 0, "imported": True, "errors": [],
    }
    chat = Prompt.objects.get(category="chat")
    assert chat.messages[0]["content"].startswith("你好") and chat.metadata == {"lang": "zh"}
    rank = Task.objects.get(kind=Task.Kind.RANK)
    assert list(rank.task_completions.values_list("completion__text", flat=True)) == [
        "one", "two", "three", "four"]
    assert set(Completion.objects.values_list("generator", flat=True)) == {"a", "b"}
    assert Task.objects.filter(kind=Task.Kind.DEMONSTRATE).count() == 2


def test_it_rejects_the_whole_file_and_reports_every_bad_line(project):
    report = run(
        project,
        jsonl(
            {"prompt": "fine"},
            "{not json",
            {"prompt": "x", "colour": "red"},
            {"prompt": "y", "category": "poetry"},
            {"messages": [{"role": "assistant", "content": "hi"}]},
            {"prompt": "z", "completions": [{"text": "only one"}]},
            {"prompt": "fine too"},
            ["a", "list"],
            {"prompt": "both", "messages": [{"role": "user", "content": "hi"}]},
        ),
    )
    assert not report.imported
    lines = [e["line"] for e in report.errors]
    assert lines == [2, 3, 4, 5, 6, 8, 9]
    messages = " ".join(e["message"] for e in report.errors)
    assert "not valid JSON" in messages and "colour" in messages and "poetry" in messages
    assert report.added == 0
    assert Prompt.objects.count() == 0 and Task.objects.count() == 0


def test_it_can_skip_bad_lines_when_asked(project):
    report = run(project, jsonl({"prompt": "good"}, "{bad", {"prompt": "also good"}),
                 skip_bad_lines=True)
    assert report.imported and report.added == 2 and report.bad_lines == 1
    assert report.errors == [{"line": 2, "message": report.errors[0]["message"]}]


def test_it_reports_bad_encoding_with_the_line_number(project):
    data = b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'
    report = run(project, data)
    assert not report.imported
    assert report.errors[0]["line"] == 2 and "UTF-8" in report.errors[0]["message"]


def test_it_accepts_a_byte_order_mark(project):
    report = run(project, b'\xef\xbb\xbf{"prompt": "hello"}\n')
    assert report.imported and report.added == 1


def test_it_removes_duplicates_by_normalized_hash(project):
    report = run(project, jsonl({"prompt": "Hello   World"}, {"prompt": "hello world"},
                                {"prompt": "ＨＥＬＬＯ world"}))
    assert report.added == 1 and report.duplicates == 2
    again = run(project, jsonl({"prompt": "HELLO WORLD"}, {"prompt": "new"}))
    assert again.added == 1 and again.duplicates == 1


def test_it_removes_duplicates_sharing_a_long_prefix(project):
    project.dedup_prefix_chars = 40
    project.save()
    stem = "Summarize the following article about the history of tea: "
    report = run(project, jsonl({"prompt": stem + "one"}, {"prompt": stem + "two"},
                                {"prompt": "short one"}, {"prompt": "short two"}))
    assert report.added == 3 and report.duplicates == 1


def test_it_caps_prompts_per_external_user(project):
    project.per_user_cap = 3
    project.save()
    items = [{"prompt": f"question {i}", "user_id": "heavy"} for i in range(5)]
    items += [{"prompt": f"other {i}", "user_id": "light"} for i in range(2)]
    report = prompts_import(project=project, records=records_from_items(items))
    assert report.added == 5 and report.capped == 2
    more = prompts_import(project=project, records=records_from_items(
        [{"prompt": "question 99", "user_id": "heavy"}]))
    assert more.capped == 1 and more.added == 0


def test_it_splits_by_user_so_no_user_straddles_splits(project):
    items = [{"prompt": f"p {u} {i}", "user_id": f"user{u}"} for u in range(60) for i in range(3)]
    prompts_import(project=project, records=records_from_items(items))
    splits_per_user = {}
    for user, split in Prompt.objects.values_list("external_user_id", "split"):
        splits_per_user.setdefault(user, set()).add(split)
    assert all(len(s) == 1 for s in splits_per_user.values())
    assert {s.pop() for s in splits_per_user.values()} == {"train", "valid", "test"}
    assert split_for("user7", 80, 10) == split_for("user7", 80, 10)


def test_it_imports_csv_with_json_and_numbered_completion_columns(project):
    data = (
        b"prompt,category,user_id,metadata,completion_1,model_1,completion_2,model_2\n"
        b'Translate "cat",rewrite,u1,"{""src"": ""csv""}",chat,m1,gato,m2\n'
        b'"A prompt\nover two lines",other,u2,,,,,\n'
    )
    report = run(project, data, name="prompts.csv")
    assert report.imported and report.added == 2, report.errors
    rank = Task.objects.get(kind=Task.Kind.RANK)
    assert rank.prompt.metadata == {"src": "csv"}
    assert Prompt.objects.filter(text="A prompt\nover two lines").exists()


def test_it_reports_csv_problems_with_line_numbers(project):
    data = b"prompt,category\nfine,other\nbad,nonsense\nx,other,extra\n"
    report = run(project, data, name="p.csv")
    assert not report.imported
    assert [e["line"] for e in report.errors] == [3, 4]


def test_it_rejects_unknown_csv_columns(project):
    report = run(project, b"text,colour\nhello,red\n", name="p.csv")
    assert not report.imported and report.errors[0]["line"] == 1


def test_it_streams_a_large_file_in_batches(project, settings):
    settings.LAOSHI_IMPORT_BATCH_SIZE = 50
    data = jsonl(*({"prompt": f"prompt number {i}", "user_id": f"u{i}"} for i in range(230)))
    report = run(project, data)
    assert report.added == 230 and Prompt.objects.count() == 230


def test_it_rejects_identical_candidates_in_one_line(project):
    report = prompts_import(project=project, records=records_from_items([
        {"prompt": "p", "completions": ["same", "Same ", "other"]}]))
    assert not report.imported and "repeats" in report.errors[0]["message"]


@pytest.mark.parametrize("rate,expected", [(0.0, 0), (1.0, 10)])
def test_the_agreement_sample_gets_a_higher_overlap(project, rate, expected):
    project.agreement_sample_rate = rate
    project.agreement_overlap = 3
    project.save()
    items = [{"prompt": f"p{i}", "completions": ["a", "b", "c", "d"]} for i in range(10)]
    prompts_import(project=project, records=records_from_items(items))
    assert Task.objects.filter(required_annotations=3).count() == expected


def _queued_import(project, data: bytes, settings, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from labeling.models import PromptImport

    settings.MEDIA_ROOT = str(tmp_path)
    return PromptImport.objects.create(
        project=project, file=SimpleUploadedFile("p.jsonl", data), file_name="p.jsonl"
    )


def test_a_worker_dying_mid_import_leaves_it_pending_and_a_rerun_finishes_it(
    project, settings, tmp_path, monkeypatch
):
    from labeling.services import importing

    prompt_import = _queued_import(
        project, b'{"prompt": "one"}\n{"prompt": "two"}\n', settings, tmp_path)

    class WorkerKilled(BaseException):
        pass

    real_flush = importing._Writer.flush

    def dying_flush(self):
        real_flush(self)
        raise WorkerKilled

    monkeypatch.setattr(importing._Writer, "flush", dying_flush)
    with pytest.raises(WorkerKilled):
        importing.prompt_import_run(prompt_import_id=prompt_import.pk)
    prompt_import.refresh_from_db()
    assert prompt_import.status == "pending" and Prompt.objects.count() == 0
    monkeypatch.setattr(importing._Writer, "flush", real_flush)
    importing.prompt_import_run(prompt_import_id=prompt_import.pk)
    importing.prompt_import_run(prompt_import_id=prompt_import.pk)  # a duplicated message
    prompt_import.refresh_from_db()
    assert prompt_import.status == "done" and prompt_import.report["added"] == 2
    assert Prompt.objects.count() == 2


def test_a_rejected_browser_import_keeps_its_report(project, settings, tmp_path):
    from labeling.services.importing import prompt_import_run

    prompt_import = _queued_import(project, b'{"prompt": "one"}\n{"oops": 1}\n', settings,
                                   tmp_path)
    prompt_import_run(prompt_import_id=prompt_import.pk)
    prompt_import.refresh_from_db()
    assert prompt_import.status == "rejected"
    assert prompt_import.report["errors"][0]["line"] == 2
    assert Prompt.objects.count() == 0
