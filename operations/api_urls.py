"""URLs of the JSON API: /api/operations/… and the batch service's /grouptasks and /tasks."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("api/operations", api.OperationViewSet, basename="api-operation")

urlpatterns = [
    *router.urls,
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("grouptasks", api.GroupTaskCreateView.as_view(), name="grouptasks"),
    path("grouptasks/<int:group_id>", api.GroupTaskDetailView.as_view(), name="grouptask"),
    path("tasks/<str:task_id>", api.TaskDetailView.as_view(), name="task"),
]
