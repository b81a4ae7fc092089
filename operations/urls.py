from django.urls import path

from . import views

app_name = "operations"

urlpatterns = [
    path("", views.OperationListView.as_view(), name="list"),
    path("new/", views.OperationCreateView.as_view(), name="new"),
    path("<int:pk>/", views.OperationDetailView.as_view(), name="detail"),
    path("<int:pk>/progress/", views.OperationProgressView.as_view(), name="progress"),
    path("<int:pk>/result.<str:fmt>", views.OperationResultView.as_view(), name="result"),
    path("<int:pk>/fork/", views.OperationForkView.as_view(), name="fork"),
    path("<int:pk>/edit/", views.OperationEditView.as_view(), name="edit"),
    path("<int:pk>/cancel/confirm/", views.OperationCancelConfirmView.as_view(), name="cancel-confirm"),
    path("<int:pk>/terminate/confirm/", views.OperationTerminateConfirmView.as_view(), name="terminate-confirm"),
    *[path(f"<int:pk>/{verb}/", views.OperationControlView.as_view(verb=verb), name=verb)
      for verb in ("pause", "resume", "cancel", "retry", "terminate", "approve", "reject")],
]
