"""The interface in English and Simplified Chinese: language choice, and a catalog that is
complete, keeps its placeholders and is compiled."""

import gettext
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import translation

from tests.conftest import PASSWORD

LOCALE_DIR = Path(settings.BASE_DIR) / "locale"
ZH_DIR = LOCALE_DIR / "zh_Hans" / "LC_MESSAGES"
PO_FILE = ZH_DIR / "django.po"
MO_FILE = ZH_DIR / "django.mo"

# Interface strings of the annotator's work page, in both languages.
ENGLISH = ["Submit", "Guidelines", "Skip or flag this task", "Hallucination (makes up facts)"]
CHINESE = ["提交", "标注指南", "跳过或报告此任务", "幻觉（编造事实）"]


@pytest.fixture(autouse=True)
def _reset_language():
    """Requests activate a language in this thread; leave English behind for other tests."""
    yield
    translation.deactivate()


@pytest.fixture
def bob_client(client, bob, project, rank_tasks):
    assert client.login(username="bob", password=PASSWORD)
    return client


def work_url(project) -> str:
    return reverse("labeling:work", args=[project.pk]) + "?kind=rank"


def page_text(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


# --- choosing the language ---------------------------------------------------------------


def test_work_page_follows_the_browser_language_chinese(bob_client, project):
    html = page_text(bob_client.get(work_url(project), HTTP_ACCEPT_LANGUAGE="zh-hans"))
    assert '<html lang="zh-hans">' in html
    for text in CHINESE:
        assert text in html
    assert ">Submit" not in html
    assert "Guidelines" not in html


def test_work_page_follows_the_browser_language_english(bob_client, project):
    html = page_text(bob_client.get(work_url(project), HTTP_ACCEPT_LANGUAGE="en"))
    assert '<html lang="en">' in html
    for text in ENGLISH:
        assert text in html
    for text in CHINESE:
        assert text not in html


def test_browser_asking_for_zh_cn_gets_simplified_chinese(bob_client, project):
    html = page_text(
        bob_client.get(work_url(project), HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9,en;q=0.5")
    )
    assert "提交" in html


def test_language_picker_switches_later_pages(bob_client, project):
    url = work_url(project)
    response = bob_client.post(reverse("set_language"), {"language": "zh-hans", "next": url})
    assert response.status_code == 302
    assert response["Location"] == url
    # The choice outlives the browser's own preference.
    html = page_text(bob_client.get(url, HTTP_ACCEPT_LANGUAGE="en"))
    assert "提交" in html and "标注指南" in html
    assert page_text(bob_client.get(reverse("labeling:project_list"))).count("项目") >= 1

    bob_client.post(reverse("set_language"), {"language": "en", "next": url})
    html = page_text(bob_client.get(url, HTTP_ACCEPT_LANGUAGE="zh-hans"))
    assert "Submit" in html and "提交" not in html


def test_language_picker_lists_both_languages(bob_client, project):
    html = page_text(bob_client.get(work_url(project)))
    assert 'action="/i18n/setlang/"' in html
    assert 'value="en"' in html and 'value="zh-hans"' in html


# --- the catalog -------------------------------------------------------------------------


def _unquote(literal: str) -> str:
    body = literal.strip()
    assert body.startswith('"') and body.endswith('"'), literal
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(0)), body[1:-1])


def parse_po(path: Path) -> list[dict]:
    """Entries of a .po file: {"flags", "msgid", "msgid_plural", "msgstr": {index: text}}.

    Obsolete entries (#~) are left out; the header is the entry whose msgid is "".
    """
    entries, entry, field = [], None, None

    def finish():
        if entry is not None and "msgid" in entry:
            entries.append(entry)

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            finish()
            entry, field = None, None
            continue
        if line.startswith("#~"):
            continue
        if entry is None:
            entry = {"flags": set(), "msgstr": {}}
        if line.startswith("#,"):
            entry["flags"].update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            continue
        elif match := re.match(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*\")$",
                               line):
            name, index, literal = match.groups()
            if name.startswith("msgstr"):
                field = ("msgstr", int(index or 0))
                entry["msgstr"][field[1]] = _unquote(literal)
            else:
                field = (name, None)
                entry[name] = _unquote(literal)
        elif line.startswith('"') and field is not None:
            name, index = field
            if name == "msgstr":
                entry["msgstr"][index] += _unquote(line)
            else:
                entry[name] += _unquote(line)
        else:
            raise AssertionError(f"cannot read this .po line: {raw!r}")
    finish()
    return entries


def messages() -> list[dict]:
    return [entry for entry in parse_po(PO_FILE) if entry["msgid"]]


def test_every_configured_language_has_a_catalog():
    for code, _name in settings.LANGUAGES:
        if code == settings.LANGUAGE_CODE:
            continue
        locale = translation.to_locale(code)
        assert (LOCALE_DIR / locale / "LC_MESSAGES" / "django.po").is_file(), code
        assert (LOCALE_DIR / locale / "LC_MESSAGES" / "django.mo").is_file(), code


def test_po_file_parses_into_many_messages():
    entries = messages()
    assert len(entries) > 100
    assert any(entry["msgid"] == "Hallucination (makes up facts)" for entry in entries)


def test_every_message_is_translated():
    untranslated = [
        entry["msgid"]
        for entry in messages()
        if not entry["msgstr"] or not all(text.strip() for text in entry["msgstr"].values())
    ]
    assert untranslated == []


def test_no_message_is_fuzzy():
    header = [entry for entry in parse_po(PO_FILE) if not entry["msgid"]]
    assert len(header) == 1 and "fuzzy" not in header[0]["flags"]
    assert [entry["msgid"] for entry in messages() if "fuzzy" in entry["flags"]] == []


def test_plural_messages_have_the_single_chinese_form():
    header = next(entry for entry in parse_po(PO_FILE) if not entry["msgid"])
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"][0]
    plurals = [entry for entry in messages() if "msgid_plural" in entry]
    assert plurals
    for entry in plurals:
        assert sorted(entry["msgstr"]) == [0], entry["msgid"]


PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\{.*?\}\}|\{\w*\}")


def test_translations_keep_every_placeholder():
    for entry in messages():
        expected = sorted(PLACEHOLDER.findall(entry["msgid"]))
        for text in entry["msgstr"].values():
            assert sorted(PLACEHOLDER.findall(text)) == expected, entry["msgid"]


def test_translations_are_chinese():
    # Proper names and acronyms may stay as they are; everything else is in Chinese.
    kept = {"API", "InstructGPT"}
    han = re.compile(r"[\u4e00-\u9fff]")
    for entry in messages():
        if entry["msgid"] in kept:
            continue
        for text in entry["msgstr"].values():
            assert han.search(text), entry["msgid"]


def test_compiled_catalog_is_up_to_date(tmp_path):
    msgfmt = shutil.which("msgfmt")
    if msgfmt is None:
        pytest.skip("GNU gettext's msgfmt is not installed")
    fresh = tmp_path / "django.mo"
    subprocess.run(
        [msgfmt, "--check-format", "-o", str(fresh), str(PO_FILE)],
        check=True,
        capture_output=True,
    )
    with fresh.open("rb") as f:
        expected = gettext.GNUTranslations(f)._catalog
    with MO_FILE.open("rb") as f:
        committed = gettext.GNUTranslations(f)._catalog
    stale = sorted(
        str(key) for key in expected.keys() | committed.keys()
        if expected.get(key) != committed.get(key)
    )
    assert stale == [], (
        "locale/zh_Hans/LC_MESSAGES/django.mo is out of date: run "
        "`python manage.py compilemessages -l zh_Hans --ignore=.venv`"
    )


def test_django_uses_the_catalog():
    with translation.override("zh-hans"):
        assert translation.gettext("Submit") == "提交"
        assert translation.ngettext("%(n)s bad line", "%(n)s bad lines", 3) == "%(n)s 行有误"
    with translation.override("en"):
        assert translation.gettext("Submit") == "Submit"
