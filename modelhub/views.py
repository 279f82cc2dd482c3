"""Pages for leads and engineers: the model registry, generation jobs and evaluations.

Every page is for the project's leads and engineers (selectors.DATA_ROLES): an outsider
gets 404, an annotator 403. Objects are reached by their own id; the view loads the
object first, then checks the caller's membership in the object's project.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from labeling.charts import bar_chart
from labeling.pages import data_membership, in_project, page_or_fragment
from modelhub.forms import EvaluationForm, GenerationForm, ModelRegisterForm, SamplerFormSet
from modelhub.models import Evaluation, GenerationJob, Job, ModelVersion
from modelhub.services import jobs as job_services
from modelhub.services.evaluation import evaluation_create, win_rate
from modelhub.services.generation import generation_job_create
from modelhub.services.registry import RegistrationError, model_register

LOG_TAIL_LINES = 40
LIST_LENGTH = 50


def humanise_count(count: int) -> str:
    """Return a parameter count the way papers write it: 3.2 M, 1.3 B, 850 K."""
    for size, unit in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return str(count)


def _model_names(generations) -> dict[int, ModelVersion]:
    ids = {sampler["model"] for generation in generations for sampler in generation.samplers}
    return ModelVersion.objects.in_bulk(ids)


def _sampler_rows(generation, models) -> list[dict]:
    return [{**sampler, "model_version": models.get(sampler["model"])}
            for sampler in generation.samplers]


# --- models ------------------------------------------------------------------------


@login_required
def model_list(request, project_id):
    membership = data_membership(request, project_id)
    project = membership.project
    form = ModelRegisterForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            model = model_register(
                project=project, name=data["name"], kind=data["kind"],
                path=data["path"] or None, hub_id=data["hub_id"] or None,
                parent=data["parent"], created_by=request.user,
            )
        except RegistrationError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Model %(name)s registered.") % {"name": model.name})
            return redirect(model)
    models = ModelVersion.objects.filter(project=project).select_related("parent")
    rows = [(model, humanise_count(model.parameter_count)) for model in models]
    return render(request, "modelhub/model_list.html",
                  {"project": project, "form": form, "rows": rows})


@login_required
def model_detail(request, model_id):
    model, membership = in_project(
        request, ModelVersion.objects.select_related("parent", "created_by"), pk=model_id
    )
    # Samplers are JSON: a containment lookup works on PostgreSQL only, so the newest 200
    # of the project's jobs are read and filtered here.
    generations = [
        generation for generation in GenerationJob.objects.filter(project=membership.project)
        .select_related("job").order_by("-job_id")[:200]
        if any(sampler["model"] == model.pk for sampler in generation.samplers)
    ]
    evaluations = (Evaluation.objects.filter(Q(model_a=model) | Q(model_b=model))
                   .select_related("model_a", "model_b", "generation__job")[:20])
    # The training app's runs reach this page through their reverse relations only:
    # modelhub imports nothing from training (dependencies point the other way).
    return render(request, "modelhub/model_detail.html", {
        "project": membership.project,
        "model": model,
        "parameters": humanise_count(model.parameter_count),
        "lineage": model.lineage(),
        "children": model.children.order_by("name"),
        "made_by_run": getattr(model, "made_by_run", None),
        # A reward model is never trained from; PPO runs score against it.
        "training_runs": (model.rewarded_runs if model.kind == ModelVersion.Kind.REWARD
                          else model.training_runs).select_related("job")[:LIST_LENGTH],
        "generations": generations,
        "evaluations": [(evaluation, win_rate(evaluation=evaluation))
                        for evaluation in evaluations],
    })


# --- generation --------------------------------------------------------------------


@login_required
def generation_list(request, project_id):
    membership = data_membership(request, project_id)
    project = membership.project
    form = GenerationForm(request.POST or None)
    samplers = SamplerFormSet(request.POST or None, prefix="sampler",
                              form_kwargs={"project": project})
    if request.method == "POST" and form.is_valid() and samplers.is_valid():
        chosen = [sampler for sampler in (row.sampler() for row in samplers) if sampler]
        try:
            generation = generation_job_create(
                project=project, samplers=chosen, prompt_filter=form.prompt_filter(),
                create_tasks=form.cleaned_data["create_tasks"], created_by=request.user,
            )
        except ValueError as exc:  # GenerationError, or sampling settings out of range
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Generation job queued."))
            return redirect(generation)
    generations = list(GenerationJob.objects.filter(project=project)
                       .select_related("job__created_by").order_by("-job_id")[:LIST_LENGTH])
    models = _model_names(generations)
    rows = [(generation, _sampler_rows(generation, models)) for generation in generations]
    return page_or_fragment(request, "modelhub/generation_list.html",
                             "modelhub/_generation_rows.html", {
                                 "project": project, "form": form, "samplers": samplers,
                                 "rows": rows,
                                 "any_active": any(g.job.is_active for g in generations),
                             })


def _selection_label(generation) -> str:
    selection = generation.prompt_filter.get("selection", GenerationJob.Selection.NO_RANK_TASK)
    return dict(GenerationJob.Selection.choices).get(selection, selection)


def _log_tail(job: Job) -> str:
    return "\n".join(job.log.splitlines()[-LOG_TAIL_LINES:])


@login_required
def generation_detail(request, job_id):
    generation, membership = in_project(
        request, GenerationJob.objects.select_related("job__created_by"), job_id=job_id
    )
    evaluation = Evaluation.objects.filter(generation=generation).first()
    return page_or_fragment(request, "modelhub/generation_detail.html",
                             "modelhub/_generation_live.html", {
                                 "project": membership.project,
                                 "generation": generation,
                                 "job": generation.job,
                                 "samplers": _sampler_rows(generation,
                                                           _model_names([generation])),
                                 "selection_label": _selection_label(generation),
                                 "evaluation": evaluation,
                                 "log_tail": _log_tail(generation.job),
                             })


@login_required
@require_POST
def job_cancel(request, job_id):
    job, _membership = in_project(request, Job.objects.all(), pk=job_id)
    job = job_services.job_cancel(job=job)
    if job.status == Job.Status.CANCELLED:
        messages.info(request, _("Job cancelled."))
    elif job.is_active:
        messages.info(request, _("Cancel requested: the worker stops at its next check."))
    else:
        messages.warning(request, _("The job had already finished."))
    # Pages of other apps (a dataset snapshot's) say where to come back to.
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                                 require_https=request.is_secure()):
        return redirect(back)
    evaluation = Evaluation.objects.filter(generation__job=job).first()
    if evaluation is not None:
        return redirect(evaluation)
    generation = GenerationJob.objects.filter(job=job).first()
    if generation is not None:
        return redirect(generation)
    return redirect("modelhub:generation_list", project_id=job.project_id)


# --- evaluations -------------------------------------------------------------------


@login_required
def evaluation_list(request, project_id):
    membership = data_membership(request, project_id)
    project = membership.project
    form = EvaluationForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            evaluation = evaluation_create(
                project=project, model_a=data["model_a"], model_b=data["model_b"],
                prompts=data["prompts"], sampling=form.sampling(), created_by=request.user,
            )
        except ValueError as exc:  # GenerationError, or sampling settings out of range
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Evaluation queued: its responses are being "
                                        "generated."))
            return redirect(evaluation)
    evaluations = list(Evaluation.objects.filter(project=project)
                       .select_related("model_a", "model_b", "generation__job")[:LIST_LENGTH])
    return page_or_fragment(request, "modelhub/evaluation_list.html",
                             "modelhub/_evaluation_rows.html", {
                                 "project": project, "form": form,
                                 "evaluations": evaluations,
                                 "any_active": any(e.generation.job.is_active
                                                   for e in evaluations),
                             })


@login_required
def evaluation_detail(request, evaluation_id):
    evaluation, membership = in_project(
        request,
        Evaluation.objects.select_related("model_a", "model_b", "generation__job"),
        pk=evaluation_id,
    )
    context = {"project": membership.project, "evaluation": evaluation,
               "job": evaluation.generation.job, "generation": evaluation.generation}
    if not request.htmx:
        result = win_rate(evaluation=evaluation)
        context["result"] = result
        if result["win_rate"] is not None:
            rate = round(result["win_rate"], 3)
            context["chart"] = bar_chart(
                [(evaluation.model_a.name, rate), (evaluation.model_b.name, round(1 - rate, 3))],
                top=1, reference=0.5, height=140,
            )
    return page_or_fragment(request, "modelhub/evaluation_detail.html",
                             "modelhub/_evaluation_live.html", context)
