"""URLs of the JSON API: include() them under "api/" → /api/operations/…, /api/schema/ and /api/docs/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, api_docs

router = SimpleRouter()
router.register("operations", api.OperationViewSet, basename="api-operation")
router.register("schedules", api.ScheduleViewSet, basename="api-schedule")

urlpatterns = [
    *router.urls,
    path("schema/", api.OperationsSchemaView.as_view(), name="api-schema"),
    path("docs/", api_docs.docs, name="api-docs"),
    path("docs/assets/<str:name>", api_docs.asset, name="api-docs-asset"),
]
