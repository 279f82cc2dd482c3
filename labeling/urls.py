from django.urls import path

from labeling import views

app_name = "labeling"

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("projects/new/", views.project_create, name="project_create"),
    path("projects/<int:project_id>/", views.project_detail, name="project_detail"),
    path("projects/<int:project_id>/settings/", views.project_settings, name="project_settings"),
    path("projects/<int:project_id>/members/", views.project_members, name="project_members"),
    path("projects/<int:project_id>/import/", views.project_import, name="project_import"),
    path("projects/<int:project_id>/import/<int:import_id>/", views.import_status,
         name="import_status"),
    path("projects/<int:project_id>/write-prompt-tasks/", views.write_prompt_tasks,
         name="write_prompt_tasks"),
    path("projects/<int:project_id>/work/", views.work, name="work"),
    path("assignments/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("assignments/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("tasks/<int:task_id>/gold/", views.task_gold, name="task_gold"),
    path("projects/<int:project_id>/review/", views.demonstration_review_list,
         name="demonstration_review_list"),
    path("annotations/<int:annotation_id>/review/", views.demonstration_review,
         name="demonstration_review"),
    path("projects/<int:project_id>/dashboard/", views.dashboard, name="dashboard"),
    path("projects/<int:project_id>/disagreements/", views.disagreement_explorer,
         name="disagreements"),
    path("projects/<int:project_id>/flags/", views.flag_report, name="flag_report"),
    path("projects/<int:project_id>/annotators.csv", views.annotators_csv,
         name="annotators_csv"),
    path("projects/<int:project_id>/members/<str:username>/active/", views.member_active,
         name="member_active"),
    path("projects/<int:project_id>/feedback/", views.demonstration_feedback,
         name="demonstration_feedback"),
]
