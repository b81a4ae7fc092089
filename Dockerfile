FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# The requirements install the operations app from this checkout (-e .): copy it first.
COPY requirements/ requirements/
COPY pyproject.toml ./
COPY docs/package.md docs/package.md
COPY operations/ operations/
RUN pip install --disable-pip-version-check -r requirements/production.txt

COPY . .
# Static files are collected at build time (whitenoise serves them); these values exist only for
# this build step: the running container reads the real ones from its environment.
RUN DJANGO_SETTINGS_MODULE=tapproject.settings.production \
    SECRET_KEY=collectstatic-only-not-a-secret-0123456789abcdefghijklmnop \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 CELERY_BROKER_URL=memory:// ALLOWED_HOSTS=build \
    TAP_VAR_DIR=/tmp/build-var \
    python manage.py collectstatic --noinput

RUN useradd --create-home tap && mkdir -p /app/var && chown tap /app/var
USER tap
EXPOSE 8000
CMD ["gunicorn", "tapproject.wsgi:application", "--config", "gunicorn.conf.py"]
