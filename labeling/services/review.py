"""Leads review demonstrations: accept, or reject with a comment the annotator sees."""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from labeling.models import Annotation, ReviewStatus


@transaction.atomic
def demonstration_review(*, annotation: Annotation, reviewer, accepted: bool,
                         comment: str = "") -> Annotation:
    """Record a lead's verdict on the demonstration of an annotation; a later one replaces it.

    A rejection needs a comment, so that the annotator learns what to change.
    """
    locked = Annotation.objects.select_for_update().get(pk=annotation.pk)
    if locked.demonstration_id is None:
        raise ValidationError(_("this annotation has no demonstration to review"))
    comment = (comment or "").strip()
    if not accepted and not comment:
        raise ValidationError({"comment": [_("say why the demonstration is rejected")]})
    locked.review_status = ReviewStatus.ACCEPTED if accepted else ReviewStatus.REJECTED
    locked.review_comment = comment[:5000]
    locked.reviewed_by = reviewer
    locked.reviewed_at = timezone.now()
    locked.save(update_fields=["review_status", "review_comment", "reviewed_by", "reviewed_at"])
    return locked
