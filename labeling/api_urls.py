from django.urls import path

from labeling import api

urlpatterns = [
    path("auth/token/", api.TokenApi.as_view(), name="api_token"),
    path("projects/", api.ProjectListApi.as_view(), name="api_projects"),
    path("projects/<int:project_id>/", api.ProjectDetailApi.as_view(), name="api_project"),
    path("projects/<int:project_id>/members/", api.MemberAddApi.as_view(), name="api_members"),
    path("projects/<int:project_id>/prompts/import/", api.PromptImportApi.as_view(),
         name="api_prompt_import"),
    path("projects/<int:project_id>/tasks/next/", api.NextTaskApi.as_view(),
         name="api_next_task"),
    path("projects/<int:project_id>/stats/", api.StatsApi.as_view(), name="api_stats"),
    path("projects/<int:project_id>/agreement/", api.AgreementApi.as_view(),
         name="api_agreement"),
    path("projects/<int:project_id>/annotations/", api.AnnotationListApi.as_view(),
         name="api_annotations"),
    path("assignments/<int:assignment_id>/submit/", api.SubmitApi.as_view(), name="api_submit"),
    path("assignments/<int:assignment_id>/skip/", api.SkipApi.as_view(), name="api_skip"),
    path("tasks/<int:task_id>/gold/", api.TaskGoldApi.as_view(), name="api_task_gold"),
]
