"""The lead's dashboard, stats API, annotator table and CSV, and pausing an annotator."""

import csv
import io

from labeling.models import Membership, ProjectFigures
from labeling.selectors import annotator_table, flag_rates
from labeling.services.assignment import assignment_claim_next, assignment_skip
from labeling.services.figures import figures_refresh
from labeling.services.metrics import agreement_refresh
from labeling.services.project import project_update
from labeling.services.submission import annotation_submit
from labeling.tasks import refresh_agreement_task


def _rank(project, user):
    a = assignment_claim_next(project=project, annotator=user)
    ranking = [{"completion": c, "rank": i + 1, "rating": 5}
               for i, c in enumerate(sorted(a.display_order))]
    annotation_submit(assignment=a, data={"ranking": ranking}, time_spent_ms=4000)


def test_the_dashboard_and_stats_are_for_leads_and_engineers(project, rank_tasks, client, api,
                                                             alice, bob, erin, charlie):
    for path in ("/projects/{}/dashboard/", "/projects/{}/annotators.csv",
                 "/projects/{}/flags/", "/projects/{}/disagreements/"):
        url = path.format(project.pk)
        client.force_login(charlie)
        assert client.get(url).status_code == 404
        client.force_login(bob)
        assert client.get(url).status_code == 403
        for user in (alice, erin):
            client.force_login(user)
            assert client.get(url).status_code == 200
    stats = f"/api/v1/projects/{project.pk}/stats/"
    assert api(charlie).get(stats).status_code == 404
    assert api(bob).get(stats).status_code == 403
    assert api(erin).get(stats).status_code == 200


def test_stats_count_progress_queue_and_throughput(project, rank_tasks, api, bob, dana, alice):
    project_update(project=project, overlap=2)
    rank_tasks.update(required_annotations=2)
    _rank(project, bob)
    _rank(project, dana)  # the same first task: now complete
    _rank(project, bob)
    body = api(alice).get(f"/api/v1/projects/{project.pk}/stats/").json()
    done = sum(row["done"] for row in body["progress"])
    in_progress = sum(row["in_progress"] for row in body["progress"])
    assert (done, in_progress) == (1, 1)
    assert sum(row["total"] for row in body["progress"]) == 8
    assert body["queue_depth"] == 8 * 2 - 3
    assert body["throughput"][-1]["annotations"] == 3 and len(body["throughput"]) == 30
    assert body["active_annotators_24h"] == 2
    assert body["days_to_finish"] == round(13 / (3 / 7), 1)


def test_the_annotator_table_and_csv(project, rank_tasks, client, alice, bob, dana):
    project_update(project=project, overlap=2)
    rank_tasks.update(required_annotations=2)
    for _ in range(2):
        _rank(project, bob)
        _rank(project, dana)
    skipped = assignment_claim_next(project=project, annotator=bob)
    assignment_skip(assignment=skipped, reason="unclear")
    agreement_refresh(project=project)
    client.force_login(alice)
    page = client.get(f"/projects/{project.pk}/dashboard/").content.decode()
    assert 'id="throughput-chart"' in page and "<rect" in page
    rows = list(csv.DictReader(io.StringIO(
        client.get(f"/projects/{project.pk}/annotators.csv").content.decode())))
    by_name = {row["username"]: row for row in rows}
    assert by_name["bob"]["tasks"] == "2" and by_name["bob"]["median_seconds"] == "4.0"
    assert by_name["bob"]["skip_rate"] == str(round(1 / 3, 3))
    assert by_name["bob"]["agreement"] == "1.0"  # both sorted the same way
    assert by_name["bob"]["consensus_agreement"] == "1.0"
    assert by_name["bob"]["flagged_share"] == "0.0"


def _rank_in_display_order(project, user, *, flag_first=False):
    # Rank responses exactly as shown: the strongest possible position bias (+1).
    a = assignment_claim_next(project=project, annotator=user)
    ranking = [{"completion": c, "rank": i + 1, "rating": 5,
                "flags": ["hallucination"] if flag_first and i == 0 else []}
               for i, c in enumerate(a.display_order)]
    annotation_submit(assignment=a, data={"ranking": ranking}, time_spent_ms=2000)
    return a


def test_the_annotator_table_shows_position_bias_and_flags_and_sorts(project, rank_tasks,
                                                                      client, alice, bob, dana):
    project_update(project=project, overlap=2)
    rank_tasks.update(required_annotations=2)
    for _ in range(2):
        _rank_in_display_order(project, bob, flag_first=True)
        _rank(project, dana)
    table = {row["username"]: row for row in annotator_table(project=project)}
    assert table["bob"]["position_bias"] == 1.0
    assert table["bob"]["flagged_share"] == 0.25  # one response of four, twice
    assert table["dana"]["flagged_share"] == 0.0
    by_flags = annotator_table(project=project, sort="-flagged_share")
    assert [row["username"] for row in by_flags] == ["bob", "dana"]
    by_flags = annotator_table(project=project, sort="flagged_share")
    assert [row["username"] for row in by_flags] == ["dana", "bob"]
    client.force_login(alice)
    page = client.get(f"/projects/{project.pk}/dashboard/?sort=-flagged_share").content.decode()
    assert page.index("<td>bob</td>") < page.index("<td>dana</td>")
    assert 'aria-sort="descending"' in page


def test_flags_are_counted_per_category(project, rank_tasks, client, alice, bob):
    for _ in range(3):
        _rank_in_display_order(project, bob, flag_first=True)
    report = flag_rates(project=project)
    total = report["total"]
    assert total["responses"] == 12
    rates = {rate["flag"]: rate for rate in total["rates"]}
    assert rates["hallucination"]["count"] == 3 and rates["hallucination"]["share"] == 0.25
    assert rates["contains_pii"]["count"] == 0
    assert sum(row["responses"] for row in report["rows"]) == 12
    client.force_login(alice)
    page = client.get(f"/projects/{project.pk}/flags/").content.decode()
    assert 'id="flag-chart"' in page and "(25.0%)" in page


def test_the_agreement_page_and_api_carry_tau_alpha_and_trend(project, rank_tasks, client,
                                                              api, alice, bob, dana):
    project_update(project=project, overlap=2)
    rank_tasks.update(required_annotations=2)
    for _ in range(3):
        _rank(project, bob)
        _rank_in_display_order(project, dana)
    agreement_refresh(project=project)
    body = api(alice).get(f"/api/v1/projects/{project.pk}/agreement/").json()
    assert -1 <= body["tau"] <= 1
    assert sum(b["tasks"] for b in body["tau_histogram"]) == 3
    assert set(body["alpha"]) == {"ranks", "ratings", "flags"}
    assert body["trend"][0]["tasks"] == 3 and "week" in body["trend"][0]
    client.force_login(alice)
    page = client.get(f"/projects/{project.pk}/dashboard/").content.decode()
    for chart in ('id="trend-chart"', 'id="tau-chart"', 'class="reference"'):
        assert chart in page


def test_a_lead_pauses_and_reactivates_an_annotator(project, rank_tasks, client, api, alice,
                                                    bob):
    client.force_login(bob)
    url = f"/projects/{project.pk}/members/bob/active/"
    assert client.post(url, {"active": "0"}).status_code == 403
    client.force_login(alice)
    client.post(url, {"active": "0"})
    assert not Membership.objects.get(user=bob).is_active
    next_url = f"/api/v1/projects/{project.pk}/tasks/next/"
    assert api(bob).post(next_url, {}, format="json").status_code == 403
    client.post(url, {"active": "1"})
    assert api(bob).post(next_url, {}, format="json").status_code == 200


def test_the_disagreement_explorer_lists_the_worst_task_first(project, rank_tasks, client,
                                                             alice, bob, dana, charlie):
    project_update(project=project, overlap=2)
    rank_tasks.update(required_annotations=2)
    for reverse_second in (False, True):
        a = assignment_claim_next(project=project, annotator=bob)
        ids = sorted(a.display_order)
        annotation_submit(assignment=a, data={"ranking": [
            {"completion": c, "rank": i + 1, "rating": 4} for i, c in enumerate(ids)]})
        b = assignment_claim_next(project=project, annotator=dana)
        order = ids[::-1] if reverse_second else ids
        annotation_submit(assignment=b, data={"ranking": [
            {"completion": c, "rank": i + 1, "rating": 4, "flags": []}
            for i, c in enumerate(order)]})
    agreement_refresh(project=project)
    url = f"/projects/{project.pk}/disagreements/"
    client.force_login(charlie)
    assert client.get(url).status_code == 404
    client.force_login(bob)
    assert client.get(url).status_code == 403
    client.force_login(alice)
    page = client.get(url).content.decode()
    worst, best = page.index("agreement 0.0"), page.index("agreement 1.0")
    assert worst < best
    assert "<th>bob</th>" in page and "<th>dana</th>" in page


def test_a_daily_quota_stops_the_queue_for_the_day(project, rank_tasks, client, api, alice,
                                                  bob):
    client.force_login(alice)
    client.post(f"/projects/{project.pk}/members/bob/active/", {"daily_quota": "1"})
    assert Membership.objects.get(user=bob).daily_quota == 1
    _rank(project, bob)
    response = api(bob).post(f"/api/v1/projects/{project.pk}/tasks/next/", {}, format="json")
    assert response.status_code == 403 and "quota" in response.json()["detail"]
    client.force_login(bob)
    page = client.get(f"/projects/{project.pk}/work/").content.decode()
    assert 'id="refusal"' in page and "quota" in page


def test_low_gold_accuracy_pauses_the_annotator_with_a_notice(project, gold_task, client,
                                                             bob):
    project_update(project=project, gold_threshold=0.8, gold_min_answers=1)
    a = assignment_claim_next(project=project, annotator=bob)
    assert a.task_id == gold_task.pk
    worst_first = sorted(a.display_order, key=gold_task.expected_ids.index, reverse=True)
    annotation_submit(assignment=a, data={"ranking": [
        {"completion": c, "rank": i + 1, "rating": 4} for i, c in enumerate(worst_first)]})
    member = Membership.objects.get(user=bob, project=project)
    assert not member.is_active and "check tasks" in member.paused_reason
    client.force_login(bob)
    page = client.get(f"/projects/{project.pk}/work/").content.decode()
    assert "check tasks is 0%" in page


def test_pages_read_stored_figures_that_the_periodic_job_refreshes(project, rank_tasks, api,
                                                                    alice, bob):
    _rank(project, bob)
    first = figures_refresh(project=project)
    first.refresh_from_db()  # as JSON: keys are strings
    assert first.annotators[str(bob.pk)]["tasks"] == 1
    assert figures_refresh(project=project).computed_at == first.computed_at  # unchanged
    _rank(project, bob)
    stats = f"/api/v1/projects/{project.pk}/stats/"
    assert api(alice).get(stats).json()["throughput"][-1]["annotations"] == 1  # as stored
    refresh_agreement_task()
    assert api(alice).get(stats).json()["throughput"][-1]["annotations"] == 2
    table = annotator_table(project=project, numbers=ProjectFigures.objects.get().annotators)
    assert {row["username"]: row["tasks"] for row in table}["bob"] == 2
