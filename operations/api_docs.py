"""GET /api/docs/: Swagger UI for the app's schema, served from installed packages (no CDN).

The page is the app's own template, so a host needs neither ``drf_spectacular`` nor
``drf_spectacular_sidecar`` in INSTALLED_APPS, nor collectstatic: the few Swagger UI files
are answered from the sidecar package's folder by ``asset``, with a long cache lifetime.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import drf_spectacular_sidecar
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

from . import __version__

SWAGGER_UI = Path(drf_spectacular_sidecar.__file__).parent / "static" / "drf_spectacular_sidecar" / "swagger-ui-dist"
#: The files the page loads; nothing else in the package's folder is served.
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png")


def _url(request: HttpRequest, name: str, *args: str) -> str:
    """``name`` reversed in the namespace the host included the API's URLs under, if any."""
    namespace = request.resolver_match.namespace if request.resolver_match else ""
    return reverse(f"{namespace}:{name}" if namespace else name, args=args)


@require_safe
def docs(request: HttpRequest) -> HttpResponse:
    return render(request, "operations/api_docs.html", {
        "schema_url": _url(request, "api-schema"),
        "asset_url": _url(request, "api-docs-asset", "-").removesuffix("-"),
        "version": __version__,
    })


@require_safe
@cache_control(public=True, max_age=7 * 24 * 3600)
def asset(request: HttpRequest, name: str) -> FileResponse:
    if name not in ASSETS:
        raise Http404(f"no such file: {name}")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse((SWAGGER_UI / name).open("rb"), content_type=content_type)
