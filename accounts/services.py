"""Writes for accounts: sign-up and the demo user of the embedded default."""

from django.contrib.auth.models import User
from django.db import transaction


@transaction.atomic
def demo_user_ensure(*, username="demo", password="demo"):
    """Create (or reset the password of) the demo user; it is a superuser so the admin is open."""
    user, created = User.objects.get_or_create(username=username, defaults={"email": ""})
    user.is_staff = True
    user.is_superuser = True
    user.set_password(password)
    user.save()
    return user, created
