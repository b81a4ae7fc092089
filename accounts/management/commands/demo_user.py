from django.core.management.base import BaseCommand

from accounts.services import demo_user_ensure


class Command(BaseCommand):
    help = "Create the demo user of the embedded default (a superuser) and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="demo")
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args, username, password, url, **options):
        _, created = demo_user_ensure(username=username, password=password)
        verb = "Created" if created else "Reset"
        self.stdout.write(self.style.SUCCESS(f"{verb} the demo user."))
        self.stdout.write(f"  URL:      {url}")
        self.stdout.write(f"  Username: {username}")
        self.stdout.write(f"  Password: {password}")
        self.stdout.write(f"  Admin:    {url.rstrip('/')}/admin/")
