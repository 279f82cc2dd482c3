"""HTML forms of the dataset and training pages: check input shape; the rules live in services."""

from django import forms
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from labeling.flags import FLAGS
from labeling.models import Category, Membership, Role, Split
from modelhub.models import ModelVersion
from training.configs import describe
from training.models import DatasetSnapshot, TrainingRun
from training.services.runs import SNAPSHOT_KIND

CHECKBOXES = forms.CheckboxSelectMultiple


def annotator_choices(project) -> list[tuple[int, str]]:
    """Return (user id, name) for the project's annotators, paused ones marked."""
    memberships = (Membership.objects.filter(project=project, role=Role.ANNOTATOR)
                   .select_related("user").order_by("user__username"))
    return [(m.user_id, m.user.username if m.is_active else
             gettext("%(name)s (paused)") % {"name": m.user.username}) for m in memberships]


class SnapshotForm(forms.Form):
    """What a dataset snapshot holds: its kind, the filter over the labels and the policies."""

    name = forms.CharField(
        label=_("Name"), max_length=100, required=False,
        help_text=_("Empty: the kind and the current time."),
    )
    kind = forms.ChoiceField(label=_("Kind"), choices=DatasetSnapshot.Kind.choices)
    splits = forms.MultipleChoiceField(
        label=_("Splits"), choices=Split.choices, required=False, widget=CHECKBOXES,
        help_text=_("None checked: every split."),
    )
    categories = forms.MultipleChoiceField(
        label=_("Categories"), choices=Category.choices, required=False, widget=CHECKBOXES,
        help_text=_("None checked: every category."),
    )
    since = forms.DateField(label=_("Annotated on or after"), required=False,
                            widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label=_("Annotated on or before"), required=False,
                            widget=forms.DateInput(attrs={"type": "date"}))
    # The range 0..1 is the service's rule; the widget only hints it to the browser.
    min_agreement = forms.FloatField(
        label=_("Minimum agreement"), required=False,
        widget=forms.NumberInput(attrs={"min": "0", "max": "1", "step": "any"}),
        help_text=_("Preference pairs and rankings: the task's pairwise agreement, 0 to 1. "
                    "Tasks ranked by one annotator have none and are left out when this "
                    "is set."),
    )
    exclude_flags = forms.MultipleChoiceField(
        label=_("Leave out responses flagged"), required=False, widget=CHECKBOXES,
        help_text=_("Preference pairs and rankings: a response any annotator flagged so "
                    "leaves its task. Check “Contains personal information (PII)” before "
                    "a data set leaves the team."),
    )
    accepted_only = forms.BooleanField(
        label=_("Accepted demonstrations only"), required=False,
        help_text=_("Demonstrations only: otherwise every demonstration not rejected."),
    )
    exclude_paused = forms.BooleanField(label=_("Leave out paused annotators"),
                                        required=False)
    exclude_annotators = forms.TypedMultipleChoiceField(
        label=_("Leave out these annotators"), coerce=int, required=False,
    )
    merge = forms.ChoiceField(
        label=_("Merge policy"), choices=DatasetSnapshot.Merge.choices,
        initial=DatasetSnapshot.Merge.PER_ANNOTATOR,
        help_text=_("Preference pairs: how several annotators' rankings of a task combine."),
    )
    pair_policy = forms.ChoiceField(
        label=_("Pairs"), choices=DatasetSnapshot.PairPolicy.choices,
        initial=DatasetSnapshot.PairPolicy.ALL,
    )
    margin = forms.BooleanField(label=_("Margin from the rating difference"), required=False)
    parquet = forms.BooleanField(label=_("Also write Parquet"), required=False)
    license = forms.CharField(
        label=_("License"), max_length=50, initial="other", required=False,
        help_text=_("A Hugging Face license id for the dataset card, e.g. cc-by-4.0."),
    )

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["exclude_flags"].choices = [
            (key, FLAGS.get(key, key)) for key in project.flags or ()]
        # A callable: the annotators are read only when the field is rendered or checked.
        self.fields["exclude_annotators"].choices = lambda: annotator_choices(project)

    def clean(self):
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            self.add_error("until", _("Comes before the first day."))
        return data

    def filters(self) -> dict:
        """Return the filter for snapshot_create (call after is_valid)."""
        data = self.cleaned_data
        filters = {key: data[key] for key in ("splits", "categories", "exclude_flags",
                                              "exclude_annotators") if data[key]}
        for key in ("since", "until"):
            if data[key]:
                filters[key] = data[key].isoformat()
        if data["min_agreement"] is not None:
            filters["min_agreement"] = data["min_agreement"]
        for key in ("accepted_only", "exclude_paused"):
            if data[key]:
                filters[key] = True
        return filters


def _default_text(value, kind: str) -> str:
    """Return a setting's default the way its form field shows it."""
    if value is None:
        return gettext("auto") if kind == "bool" else gettext("empty")
    if isinstance(value, bool):
        return gettext("yes") if value else gettext("no")
    if isinstance(value, list | tuple):
        return ", ".join(value)
    return str(value)


class CommaListField(forms.CharField):
    """A list of names typed as comma-separated text; empty is None when optional."""

    def __init__(self, *, optional: bool, **kwargs):
        self.optional = optional
        super().__init__(required=False, **kwargs)

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        items = [item.strip() for item in super().to_python(value).split(",") if item.strip()]
        return items or (None if self.optional else [])


def setting_field(setting: dict) -> forms.Field:
    """Return the form field of one setting of training.configs.describe()."""
    kind, default, optional = setting["type"], setting["default"], setting["optional"]
    common = {"label": setting["name"], "initial": default,
              "help_text": " ".join(filter(None, (setting["help"], gettext(
                  "Default: %(value)s.") % {"value": _default_text(default, kind)})))}
    if kind == "bool":
        choices = [("true", _("yes")), ("false", _("no"))]
        if optional:
            choices.append(("", _("auto")))
        initial = "" if default is None else ("true" if default else "false")
        return forms.TypedChoiceField(choices=choices, coerce=lambda value: value == "true",
                                      empty_value=None, required=not optional,
                                      **common | {"initial": initial})
    if kind == "int":
        return forms.IntegerField(required=not optional, **common)
    if kind == "float":
        return forms.FloatField(required=not optional, **common)
    if kind == "list":
        return CommaListField(optional=optional, **common)
    return forms.CharField(required=not optional, empty_value=None if optional else "",
                           max_length=200, **common)


class SnapshotChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        rows = sum(obj.row_counts.values())
        return ngettext("%(name)s (#%(id)s, %(rows)s row)", "%(name)s (#%(id)s, %(rows)s rows)",
                        rows) % {"name": obj.name, "id": obj.pk, "rows": rows}


class ModelVersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return f"{obj.name} ({obj.get_kind_display()})"


GROUP_LEGENDS = {"model": _("Model"), "data": _("Data"), "training": _("Training")}


class RunForm(forms.Form):
    """What a training run reads (snapshots and models) and its settings, one field each.

    The settings' fields are built from training.configs.describe(kind), each with its
    default filled in; ``config()`` returns only those set to something else.
    """

    snapshot = SnapshotChoiceField(label=_("Dataset snapshot"),
                                   queryset=DatasetSnapshot.objects.none())
    parent = ModelVersionChoiceField(
        label=_("Model to train"), queryset=ModelVersion.objects.none(),
        help_text=_("A language model of this project (not a reward model, not archived)."))
    reward_model = ModelVersionChoiceField(
        label=_("Reward model"), queryset=ModelVersion.objects.none(),
        help_text=_("Scores the policy's responses; the value model starts from it too."))
    sft_snapshot = SnapshotChoiceField(label=_("Demonstrations"), required=False,
                                       queryset=DatasetSnapshot.objects.none())

    def __init__(self, *args, project, kind: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = describe(kind)
        built = DatasetSnapshot.objects.filter(project=project).exclude(content_hash="")
        self.fields["snapshot"].queryset = built.filter(kind=SNAPSHOT_KIND[kind])
        self.fields["snapshot"].help_text = gettext("Built snapshots of kind “%(kind)s”.") % {
            "kind": DatasetSnapshot.Kind(SNAPSHOT_KIND[kind]).label}
        ready = ModelVersion.objects.filter(project=project, status=ModelVersion.Status.READY)
        self.fields["parent"].queryset = ready.exclude(kind=ModelVersion.Kind.REWARD)
        if kind == TrainingRun.Kind.PPO:
            self.fields["reward_model"].queryset = ready.filter(kind=ModelVersion.Kind.REWARD)
        else:
            del self.fields["reward_model"]
        if kind == TrainingRun.Kind.SFT:
            del self.fields["sft_snapshot"]
        else:
            self.fields["sft_snapshot"].queryset = built.filter(kind=DatasetSnapshot.Kind.SFT)
            self.fields["sft_snapshot"].help_text = (
                _("Optional. The demonstrations mixed into PPO's objective (the pretraining "
                  "term, weighted by ptx_coef).") if kind == TrainingRun.Kind.PPO else
                _("Optional. Demonstrations whose mean reward sets the reward model's bias, "
                  "so that a typical demonstration scores 0."))
        for setting in self.settings:
            self.fields[setting["name"]] = setting_field(setting)

    def groups(self) -> list[tuple[str, list]]:
        """Return (legend, bound fields) for the inputs, then each group of settings."""
        inputs = [self[name] for name in ("snapshot", "sft_snapshot", "parent", "reward_model")
                  if name in self.fields]
        groups = [(_("Inputs"), inputs)]
        for group, legend in GROUP_LEGENDS.items():
            groups.append((legend, [self[s["name"]] for s in self.settings
                                    if s["group"] == group]))
        return groups

    def config(self) -> dict:
        """Return the settings that differ from their defaults (call after is_valid)."""
        data = self.cleaned_data
        return {s["name"]: data[s["name"]] for s in self.settings
                if data[s["name"]] != s["default"]}
