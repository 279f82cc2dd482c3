from django.contrib import admin

from modelhub.models import Evaluation, GenerationJob, Job, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "project", "parent", "parameter_count", "created_at"]
    list_filter = ["kind", "project"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "project", "status", "progress", "total", "attempts",
                    "lease_owner", "heartbeat_at"]
    list_filter = ["kind", "status"]


admin.site.register(GenerationJob)
admin.site.register(Evaluation)
