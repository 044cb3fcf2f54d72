# Image for docker-compose.yml: one image, one Procfile process per container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first (against empty stand-ins for the packages), so that a code change does
# not reinstall them. The runtime set only: no `dev` extra, so no embedded PostgreSQL/Redis,
# honcho or test tools in the image (pyproject.toml; tests/test_dependencies.py).
COPY pyproject.toml ./
RUN mkdir -p app workers && touch app/__init__.py workers/__init__.py celery_config.py \
    && pip install . \
    && pip uninstall -y vibebox \
    && rm -rf app workers celery_config.py build

# Editable, so that the code (and migrations/, which `vibebox db upgrade` finds next to the
# app package) is the one in /app.
COPY . .
RUN pip install --no-deps -e . \
    && useradd --system --user-group --home-dir /app --shell /usr/sbin/nologin vibebox \
    && mkdir -p /app/var \
    && chown vibebox:vibebox /app/var

USER vibebox
EXPOSE 5000 5555
CMD ["gunicorn", "-c", "python:app.gunicorn_config", "--bind", "0.0.0.0:5000", "--workers", "2", "--access-logfile", "-", "app:create_app()"]
