"""HTML forms of the model pages: parse and check input shape; the rules live in the services."""

import re

from django import forms
from django.utils.translation import gettext_lazy as _

from labeling.models import Category, Split
from modelhub.ml.sampling import MAX_NEW_TOKENS
from modelhub.models import GenerationJob, ModelVersion
from modelhub.services.generation import MAX_PROMPTS

SAMPLER_ROWS = 3  # sampler rows on the generation form; rows without a model are ignored


def _generating_models(project):
    """Return the project's models that can write completions (reward models cannot)."""
    return (ModelVersion.objects.filter(project=project)
            .exclude(kind=ModelVersion.Kind.REWARD).order_by("name"))


class ModelRegisterForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    kind = forms.ChoiceField(label=_("Kind"), choices=ModelVersion.Kind.choices)
    path = forms.CharField(
        label=_("Directory on the server"), max_length=500, required=False,
        help_text=_("A save_pretrained directory with safetensors weights, under the "
                    "server's model directories."),
    )
    hub_id = forms.CharField(
        label=_("or Hugging Face Hub id"), max_length=200, required=False,
        help_text=_("For example gpt2; downloaded into the server's model directory."),
    )
    parent = forms.ModelChoiceField(
        label=_("Parent model"), queryset=ModelVersion.objects.none(), required=False,
        empty_label=_("(none)"),
    )

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["parent"].queryset = ModelVersion.objects.filter(project=project)


class GenerationForm(forms.Form):
    """Which prompts a generation job works on, and whether it makes ranking tasks."""

    selection = forms.ChoiceField(
        label=_("Prompts"), choices=GenerationJob.Selection.choices,
        initial=GenerationJob.Selection.NO_RANK_TASK,
    )
    split = forms.ChoiceField(label=_("Split"), required=False,
                              choices=[("", "—"), *Split.choices])
    category = forms.ChoiceField(label=_("Category"), required=False,
                                 choices=[("", "—"), *Category.choices])
    ids = forms.CharField(label=_("Prompt ids"), required=False,
                          help_text=_("Separated by commas or spaces."))
    limit = forms.IntegerField(label=_("At most this many prompts"), required=False,
                               min_value=1, max_value=MAX_PROMPTS)
    create_tasks = forms.BooleanField(label=_("Create a ranking task per prompt"),
                                      required=False, initial=True)

    def clean_ids(self) -> list[int]:
        text = self.cleaned_data["ids"].strip()
        parts = [part for part in re.split(r"[\s,]+", text) if part]
        if not all(part.isdigit() for part in parts):
            raise forms.ValidationError(_("Prompt ids are whole numbers."))
        return [int(part) for part in parts]

    def clean(self):
        data = super().clean()
        selection = data.get("selection")
        needed = {GenerationJob.Selection.SPLIT: "split",
                  GenerationJob.Selection.CATEGORY: "category",
                  GenerationJob.Selection.IDS: "ids"}.get(selection)
        if needed and not data.get(needed) and needed not in self.errors:
            self.add_error(needed, _("Needed for this selection of prompts."))
        return data

    def prompt_filter(self) -> dict:
        """Return the prompt filter for generation_job_create (call after is_valid)."""
        data = self.cleaned_data
        selection = data["selection"]
        prompt_filter = {"selection": selection}
        if selection == GenerationJob.Selection.SPLIT:
            prompt_filter["split"] = data["split"]
        elif selection == GenerationJob.Selection.CATEGORY:
            prompt_filter["category"] = data["category"]
        elif selection == GenerationJob.Selection.IDS:
            prompt_filter["ids"] = data["ids"]
        if data.get("limit"):
            prompt_filter["limit"] = data["limit"]
        return prompt_filter


class SamplerForm(forms.Form):
    """One sampler row: a model, how many candidates it writes per prompt, and how."""

    model = forms.ModelChoiceField(label=_("Model"), queryset=ModelVersion.objects.none(),
                                   required=False, empty_label="—")
    count = forms.IntegerField(label=_("Candidates"), min_value=1, max_value=9, initial=2)
    temperature = forms.FloatField(label=_("Temperature"), min_value=0, initial=1.0)
    top_p = forms.FloatField(label=_("Top p"), min_value=0, max_value=1, initial=1.0)
    max_new_tokens = forms.IntegerField(label=_("Max new tokens"), min_value=1,
                                        max_value=MAX_NEW_TOKENS, initial=64)
    seed = forms.IntegerField(label=_("Seed"), min_value=0, initial=0)

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].queryset = _generating_models(project)

    def sampler(self) -> dict | None:
        """Return the row as a sampler for generation_job_create, or None when it is empty."""
        data = self.cleaned_data
        if not data.get("model"):
            return None
        return {"model": data["model"].pk, "count": data["count"],
                "temperature": data["temperature"], "top_p": data["top_p"],
                "max_new_tokens": data["max_new_tokens"], "seed": data["seed"]}


SamplerFormSet = forms.formset_factory(
    SamplerForm, extra=SAMPLER_ROWS, max_num=SAMPLER_ROWS, absolute_max=SAMPLER_ROWS,
)


class EvaluationForm(forms.Form):
    model_a = forms.ModelChoiceField(label=_("Model A"), queryset=ModelVersion.objects.none())
    model_b = forms.ModelChoiceField(label=_("Model B (the baseline)"),
                                     queryset=ModelVersion.objects.none())
    prompts = forms.IntegerField(label=_("Test prompts"), min_value=1, max_value=MAX_PROMPTS,
                                 initial=100)
    temperature = forms.FloatField(label=_("Temperature"), min_value=0, initial=1.0)
    max_new_tokens = forms.IntegerField(label=_("Max new tokens"), min_value=1,
                                        max_value=MAX_NEW_TOKENS, initial=64)

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model_a"].queryset = _generating_models(project)
        self.fields["model_b"].queryset = _generating_models(project)

    def sampling(self) -> dict:
        """Return the sampling settings both models use (call after is_valid)."""
        return {"temperature": self.cleaned_data["temperature"],
                "max_new_tokens": self.cleaned_data["max_new_tokens"]}
