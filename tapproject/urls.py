from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from .views import healthz

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="operations:list", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    # The operations app, included as docs/installation.md tells any host to.
    path("operations/", include("operations.urls")),
    path("api/", include("operations.api_urls")),
    # The demo's batch service endpoints, at the root where its clients expect them.
    path("", include("operations.contrib.demo.urls")),
    path("healthz/", healthz, name="healthz"),
]
