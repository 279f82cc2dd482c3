# syntax=docker/dockerfile:1
# The Laoshi image: web (gunicorn), the Celery workers, beat, flower and the one-shot
# migrate service of docker-compose.yml all run it.
#   docker build -t laoshi .
# torch==2.13.0 comes from PyPI here: on linux/x86_64 that is the CUDA build, which the
# GPU worker (NVIDIA runtime) uses and which also runs on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Flower is an operations tool, not a dependency of the application, so it is pinned
# here, in the image only, and not in pyproject.toml.
ARG FLOWER_VERSION=2.2.0

RUN groupadd --system --gid 1000 laoshi \
    && useradd --system --uid 1000 --gid laoshi --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin laoshi

WORKDIR /app

# The pinned dependencies alone first, in their own layer, so that a code change does
# not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "flower==${FLOWER_VERSION}" \
    && rm /tmp/requirements.txt

COPY . .
# Editable, so that the code runs from /app: templates/, static/ and the demo data live
# beside the packages, BASE_DIR is computed from config/settings/, and a wheel in
# site-packages would hold only the .py files.
RUN pip install --no-deps --editable .

# Hashed, compressed static files (the production storage) are built into the image.
# The key and URLs below exist only inside this RUN: the key is random, thrown away,
# never stored in a layer nor used at run time; nothing connects to the URLs.
RUN DJANGO_SETTINGS_MODULE=config.settings.production \
    DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(64))')" \
    DATABASE_URL=postgres://build@127.0.0.1:5432/build \
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \
    python manage.py collectstatic --noinput

# The code stays root-owned (read-only to the app); only var/ (media, beat schedule,
# the compose volume's mount point) is writable.
RUN mkdir -p /app/var && chown laoshi:laoshi /app/var
USER laoshi

ENV DJANGO_SETTINGS_MODULE=config.settings.production
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]
