"""URLs of the JSON API: include() them under "api/" → /api/operations/… and /api/schema/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api

router = SimpleRouter()
router.register("operations", api.OperationViewSet, basename="api-operation")

urlpatterns = [
    *router.urls,
    path("schema/", api.OperationsSchemaView.as_view(), name="api-schema"),
]
