"""The batch service's URLs, at the site's root as its clients expect: include() them at ""."""

from django.urls import path

from . import api

urlpatterns = [
    path("grouptasks", api.GroupTaskCreateView.as_view(), name="grouptasks"),
    path("grouptasks/<str:group_id>", api.GroupTaskDetailView.as_view(), name="grouptask"),
    path("tasks/<str:task_id>", api.TaskDetailView.as_view(), name="task"),
]
