"""A host project built the way docs/installation.md says: the wheel, a fresh venv, startproject.

The wheel is built from a copy of this checkout and installed with ``--no-deps`` into a new
virtualenv; the venv finds the pinned dependencies (Django, Celery, …) through a ``.pth`` line
naming this project's site-packages folder. A folder named in a ``.pth`` file is put on
``sys.path`` without reading the ``.pth`` files inside it, so the editable install of the
operations app living there is *not* seen: the host imports the wheel's copy (``host.python``
asserts it).
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
INSTALLATION_DOC = ROOT / "docs" / "installation.md"
COPY_IGNORED = shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__",
                                      "staticfiles", ".pytest_cache", ".hypothesis", "node_modules")


def run(args, *, cwd=None, env=None, timeout=300, check=True):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def build_wheel(folder):
    """``pip wheel .`` of a copy of this checkout (as ``pip install .`` would build it)."""
    source = Path(folder) / "source"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORED)
    out = Path(folder) / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", out, source], timeout=300)
    (wheel,) = out.glob("django_tappable-*.whl")
    return wheel


def wheel_files(wheel):
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def make_venv(folder, wheel):
    """A new virtualenv with the wheel installed and this project's dependencies visible."""
    venv = Path(folder) / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                         .stdout.strip())
    (site_packages / "_tapproject_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet",
         wheel], timeout=300)
    return python


def doc_block(name):
    """The code block that follows ``<!-- host: NAME -->`` in docs/installation.md."""
    text = INSTALLATION_DOC.read_text()
    match = re.search(rf"<!-- host: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError(f"docs/installation.md has no block marked <!-- host: {name} -->")
    return match.group(1)


KIND = '''
"""A kind of the host's own: stock items chunk by chunk (in-step checkpoints), undo on cancel."""

import time
from pathlib import Path

from celery import chain
from django import forms
from django.db import connection

from operations import Kind, KindForm, register_kind, step

from .models import Item


@step(name="shop.stock", context=True, atomic=False)
def stock(ctx, items, chunk, delay, fail_marker):
    done = (ctx.state or {}).get("done", 0)
    while done < items:
        upper = min(items, done + chunk)
        if fail_marker and upper > items // 2 and not Path(fail_marker).exists():
            Path(fail_marker).write_text("failed once")
            raise RuntimeError("the supplier is down")
        with ctx.checkpoint({"done": upper}, done=upper, total=items):
            Item.objects.bulk_create([Item(operation_id=ctx.operation_id, n=n) for n in range(done, upper)])
        done = upper
        if delay:
            time.sleep(delay)
    return done


@step(name="shop.report", atomic=False)
def report(count):
    setting = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW idle_in_transaction_session_timeout")
            setting = cursor.fetchone()[0]
    return {"stocked": count, "idle_in_transaction_session_timeout": setting}


class RestockForm(KindForm):
    items = forms.IntegerField(min_value=1)
    chunk = forms.IntegerField(min_value=1, required=False, initial=10)
    delay = forms.FloatField(min_value=0, required=False, initial=0.0)
    fail_marker = forms.CharField(required=False, initial="")


def unstock(operation):
    removed, _ = Item.objects.filter(operation_id=operation.pk).delete()
    return f"removed {removed} item(s)"


register_kind(Kind(
    name="restock", label="Restock the shop", form=RestockForm,
    build=lambda p: chain(stock.si(p["items"], p["chunk"], p["delay"], p["fail_marker"]), report.s()),
    compensate=unstock, cancel_effect="Removes the items it stocked.",
    count_rows=lambda operation: Item.objects.filter(operation_id=operation.pk).count(),
    progress="custom", progress_unit="items",
))
'''

MODELS = '''
from django.db import models


class Item(models.Model):
    operation = models.ForeignKey("operations.Operation", on_delete=models.CASCADE)
    n = models.IntegerField()
'''


class Host:
    """A ``django-admin startproject hostsite`` with only what docs/installation.md adds."""

    def __init__(self, folder, python, *, database, broker_url):
        self.folder = Path(folder)
        self.python = python
        self.site = self.folder / "site"
        self.env = {"PATH": f"{Path(python).parent}:/usr/bin:/bin", "HOME": str(self.folder),
                    "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "hostsite.settings",
                    "HOST_BROKER_URL": broker_url}
        self.database = database

    def create(self):
        self.site.mkdir(parents=True)
        run([self.python, "-m", "django", "startproject", "hostsite", self.site], env=self.env)
        package = self.site / "hostsite"
        settings = package / "settings.py"
        settings.write_text(settings.read_text() + "\n# --- docs/installation.md ---\n" + doc_block("settings")
                            + textwrap.dedent(f"""
            # --- this machine ---
            import os
            INSTALLED_APPS += ["shop"]
            CELERY_BROKER_URL = os.environ["HOST_BROKER_URL"]
            DATABASES = {{"default": {self.database!r}}}
            """))
        (package / "celery.py").write_text(doc_block("celery.py").replace("proj", "hostsite"))
        (package / "__init__.py").write_text(doc_block("__init__.py").replace("proj", "hostsite"))
        urls = package / "urls.py"
        urls.write_text(urls.read_text() + "\n" + doc_block("urls"))
        shop = self.site / "shop"
        (shop / "migrations").mkdir(parents=True)
        (shop / "__init__.py").write_text("")
        (shop / "migrations" / "__init__.py").write_text("")
        (shop / "models.py").write_text(MODELS)
        (shop / "operation_kinds.py").write_text(KIND)
        return self

    def manage(self, *args, check=True, timeout=120, env=None):
        return run([self.python, "manage.py", *args], cwd=self.site, env={**self.env, **(env or {})},
                   check=check, timeout=timeout)

    def popen(self, args, log_name):
        log = open(self.folder / log_name, "wb")
        return subprocess.Popen([str(self.python), *map(str, args)], cwd=self.site, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, log_name):
        path = self.folder / log_name
        return path.read_text(errors="replace") if path.exists() else ""


def stop(process, timeout=20):
    """SIGTERM the process group, SIGKILL what is left."""
    if process is None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
