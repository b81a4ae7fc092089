from django.contrib.auth.mixins import LoginRequiredMixin
from django.views.generic import TemplateView


class OperationListView(LoginRequiredMixin, TemplateView):
    template_name = "operations/list.html"
