"""Demonstration review: leads accept or reject, annotators see the feedback."""

import pytest
from django.core.exceptions import ValidationError

from labeling import selectors
from labeling.models import Annotation
from labeling.services.assignment import assignment_claim_next
from labeling.services.importing import prompts_import, records_from_items
from labeling.services.review import demonstration_review
from labeling.services.submission import annotation_submit


@pytest.fixture
def demos(project, bob):
    prompts_import(project=project, records=records_from_items(
        [{"prompt": f"Explain topic {i}", "user_id": f"u{i}"} for i in range(3)]))
    made = []
    for i in range(3):
        assignment = assignment_claim_next(project=project, annotator=bob)
        made.append(annotation_submit(assignment=assignment,
                                      data={"text": f"Answer {i}"}).annotation)
    return made


def test_a_lead_accepts_and_rejects_with_a_comment(project, demos, alice):
    accepted = demonstration_review(annotation=demos[0], reviewer=alice, accepted=True)
    assert accepted.review_status == "accepted" and accepted.reviewed_by == alice
    with pytest.raises(ValidationError, match="say why"):
        demonstration_review(annotation=demos[1], reviewer=alice, accepted=False)
    rejected = demonstration_review(annotation=demos[1], reviewer=alice, accepted=False,
                                    comment="Too short: explain the mechanism.")
    assert rejected.review_status == "rejected"


def test_rejected_demonstrations_never_reach_training(project, demos, alice):
    demonstration_review(annotation=demos[1], reviewer=alice, accepted=False, comment="No.")
    kept = set(selectors.demonstrations_for_training(project=project).values_list("pk",
                                                                                  flat=True))
    assert kept == {demos[0].pk, demos[2].pk}


def test_an_annotation_without_a_demonstration_cannot_be_reviewed(project, rank_tasks, bob,
                                                                    alice):
    a = assignment_claim_next(project=project, annotator=bob, kind="rank")
    ranking = [{"completion": c, "rank": i + 1, "rating": 3}
               for i, c in enumerate(a.display_order)]
    annotation = annotation_submit(assignment=a, data={"ranking": ranking}).annotation
    with pytest.raises(ValidationError):
        demonstration_review(annotation=annotation, reviewer=alice, accepted=True)


def test_the_review_pages_are_for_leads_only(project, demos, client, bob, erin, charlie,
                                             alice):
    url = f"/projects/{project.pk}/review/"
    post = f"/annotations/{demos[0].pk}/review/"
    client.force_login(charlie)
    assert client.get(url).status_code == 404
    assert client.post(post, {"verdict": "accept"}).status_code == 404
    for user in (bob, erin):
        client.force_login(user)
        assert client.get(url).status_code == 403
        assert client.post(post, {"verdict": "accept"}).status_code == 403
    client.force_login(alice)
    page = client.get(url).content.decode()
    assert "Answer 0" in page and "Answer 2" in page


def test_a_lead_reviews_in_place_and_the_annotator_sees_the_feedback(project, demos, client,
                                                                     alice, bob):
    client.force_login(alice)
    row = client.post(f"/annotations/{demos[1].pk}/review/",
                      {"verdict": "reject", "comment": "<b>Cite the source</b>"},
                      HTTP_HX_REQUEST="true").content.decode()
    assert 'id="review-' in row and "<html" not in row
    assert "&lt;b&gt;Cite the source&lt;/b&gt;" in row
    missing = client.post(f"/annotations/{demos[2].pk}/review/", {"verdict": "reject"},
                          HTTP_HX_REQUEST="true").content.decode()
    assert "say why" in missing
    assert Annotation.objects.get(pk=demos[2].pk).review_status == "pending"
    client.force_login(bob)
    feedback = client.get(f"/projects/{project.pk}/feedback/").content.decode()
    assert "&lt;b&gt;Cite the source&lt;/b&gt;" in feedback and "Answer 1" in feedback
    assert "Answer 0" not in feedback  # not reviewed yet
