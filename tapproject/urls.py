from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from .views import healthz

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="operations:list", permanent=False)),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("operations/", include("operations.urls")),
    path("", include("operations.api_urls")),
    path("healthz/", healthz, name="healthz"),
]
