from django.contrib import admin

from labeling.models import Annotation, Assignment, Membership, Project, Prompt, Task


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "k", "overlap", "created_at"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "is_active"]
    list_filter = ["role", "is_active"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "category", "split", "source", "external_user_id"]
    list_filter = ["category", "split", "source"]
    search_fields = ["text"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "status", "assigned_count", "submitted_count",
                    "required_annotations", "is_gold"]
    list_filter = ["kind", "status", "is_gold"]
    raw_id_fields = ["prompt", "prompt_author"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "state", "expires_at"]
    list_filter = ["state"]
    raw_id_fields = ["task"]


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "annotator", "kind", "created_at"]
    list_filter = ["kind"]
    raw_id_fields = ["assignment", "task", "demonstration", "written_prompt"]
