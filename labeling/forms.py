"""HTML forms: parse and check input shape; the rules live in the services."""

from django import forms
from django.utils.translation import gettext_lazy as _

from labeling.flags import FLAGS
from labeling.models import Category, Project, Prompt, Role


class ProjectForm(forms.ModelForm):
    flags = forms.MultipleChoiceField(
        label=_("Flags asked per response"),
        choices=list(FLAGS.items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )

    class Meta:
        model = Project
        fields = [
            "name", "guidelines", "k", "allow_ties", "overlap", "agreement_sample_rate",
            "agreement_overlap", "lease_minutes", "flags", "gold_rate", "gold_threshold",
            "gold_min_answers", "per_user_cap",
            "dedup_prefix_chars", "split_train", "split_valid",
        ]
        widgets = {"guidelines": forms.Textarea(attrs={"rows": 10})}


class MemberForm(forms.Form):
    username = forms.CharField(label=_("Username"), max_length=150)
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices)
    password = forms.CharField(
        label=_("Password (only to create a new account)"),
        required=False,
        widget=forms.PasswordInput(render_value=False),
        strip=False,
    )


class ImportForm(forms.Form):
    file = forms.FileField(label=_("JSONL or CSV file"))
    skip_bad_lines = forms.BooleanField(
        label=_("Skip bad lines instead of rejecting the whole file"), required=False
    )
    create_demonstrate_tasks = forms.BooleanField(
        label=_("Create a demonstration task for each prompt without responses"),
        required=False,
        initial=True,
    )


class WritePromptTasksForm(forms.Form):
    count = forms.IntegerField(label=_("Number of tasks"), min_value=1, max_value=10_000,
                               initial=10)


class GoldForm(forms.Form):
    """Expected ranking of a gold task: one rank field per completion, built per task."""

    def __init__(self, *args, completion_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.completion_ids = list(completion_ids)
        for cid in self.completion_ids:
            self.fields[f"rank_{cid}"] = forms.IntegerField(
                min_value=1, max_value=len(self.completion_ids), label=_("Rank")
            )

    def ranking(self) -> dict:
        return {cid: self.cleaned_data[f"rank_{cid}"] for cid in self.completion_ids}


CATEGORY_CHOICES = Category.choices
STYLE_CHOICES = Prompt.Style.choices
