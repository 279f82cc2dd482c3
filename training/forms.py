"""HTML forms of the dataset pages: parse and check input shape; the rules live in the services."""

from django import forms
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from labeling.flags import FLAGS
from labeling.models import Category, Membership, Role, Split
from training.models import DatasetSnapshot

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
