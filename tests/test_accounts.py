import pytest
from django.contrib.auth.models import User
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_signup_login_logout_round_trip(client):
    response = client.post(
        reverse("signup"),
        {"username": "alice", "email": "alice@example.com",
         "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("operations:list")
    assert User.objects.filter(username="alice").exists()
    # Signed up means logged in.
    assert client.get(reverse("operations:list")).status_code == 200

    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("operations:list")).status_code == 302  # back to log-in

    response = client.post(reverse("login"), {"username": "alice", "password": "a-long-passphrase-42"})
    assert response.status_code == 302
    assert response["Location"] == reverse("operations:list")
    page = client.get(reverse("operations:list"))
    assert page.status_code == 200
    assert b"alice" in page.content


def test_logout_is_post_only(client):
    User.objects.create_user("bob", password="pw-bob-123456")
    client.login(username="bob", password="pw-bob-123456")
    assert client.get(reverse("logout")).status_code == 405
    # Still logged in after the refused GET.
    assert client.get(reverse("operations:list")).status_code == 200


def test_wrong_password_gets_a_clear_message(client):
    User.objects.create_user("carol", password="right-password-1")
    response = client.post(reverse("login"), {"username": "carol", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_signup_rejects_mismatched_passwords_with_a_field_message(client):
    response = client.post(
        reverse("signup"),
        {"username": "dave", "password1": "a-long-passphrase-42", "password2": "different-pass-43"},
    )
    assert response.status_code == 200
    assert "The two password fields didn" in response.content.decode()
    assert not User.objects.filter(username="dave").exists()


def test_operations_page_requires_login(client):
    response = client.get(reverse("operations:list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_demo_user_command_creates_a_superuser_and_prints_credentials(capsys):
    from django.core.management import call_command

    call_command("demo_user", "--url", "http://127.0.0.1:8123/")
    out = capsys.readouterr().out
    assert "Username: demo" in out and "Password: demo" in out and "http://127.0.0.1:8123/" in out
    user = User.objects.get(username="demo")
    assert user.is_superuser and user.check_password("demo")
