from django.urls import path

from modelhub import api

urlpatterns = [
    path("models/", api.ModelListApi.as_view(), name="api_models"),
    path("models/<int:model_id>/", api.ModelDetailApi.as_view(), name="api_model"),
    path("generation-jobs/", api.GenerationListApi.as_view(), name="api_generation_jobs"),
    path("generation-jobs/<int:job_id>/", api.GenerationDetailApi.as_view(),
         name="api_generation_job"),
    path("generation-jobs/<int:job_id>/cancel/", api.GenerationCancelApi.as_view(),
         name="api_generation_cancel"),
    path("evaluations/", api.EvaluationListApi.as_view(), name="api_evaluations"),
    path("evaluations/<int:evaluation_id>/", api.EvaluationDetailApi.as_view(),
         name="api_evaluation"),
]
