from django.urls import path

from modelhub import views

app_name = "modelhub"

urlpatterns = [
    path("projects/<int:project_id>/models/", views.model_list, name="model_list"),
    path("models/<int:model_id>/", views.model_detail, name="model_detail"),
    path("projects/<int:project_id>/generation/", views.generation_list,
         name="generation_list"),
    path("generation/<int:job_id>/", views.generation_detail, name="generation_detail"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("projects/<int:project_id>/evaluations/", views.evaluation_list,
         name="evaluation_list"),
    path("evaluations/<int:evaluation_id>/", views.evaluation_detail,
         name="evaluation_detail"),
]
