from django.contrib.auth import views as auth_views
from django.urls import path

from .views import SignUpView

urlpatterns = [
    path("signup/", SignUpView.as_view(), name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    # Django's LogoutView only accepts POST: a link or an image tag cannot log anyone out.
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
