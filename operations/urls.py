from django.urls import path

from . import views

app_name = "operations"

urlpatterns = [
    path("", views.OperationListView.as_view(), name="list"),
]
