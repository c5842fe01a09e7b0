# One image for the migrate, training, worker and beat containers (and the service in
# compose.yaml): they run the same code with the same dependencies, only the command differs.
# The production serving image is the one `bentoml containerize` builds (scripts/containerize).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_HOME=/home/scorebox/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    PYTHONPATH=/app

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin scorebox \
    && mkdir -p /home/scorebox/bentoml \
    && chown scorebox:scorebox /home/scorebox/bentoml

WORKDIR /app

# Dependencies first, in a layer that is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir scorebox training service worker \
    && touch scorebox/__init__.py training/__init__.py service/__init__.py worker/__init__.py \
    && pip install . \
    && pip uninstall -y scorebox \
    && rm -rf scorebox training service worker build

COPY bentofile.yaml ./
COPY scorebox ./scorebox
COPY training ./training
COPY service ./service
COPY worker ./worker
RUN pip install --no-deps . && rm -rf build

USER 10001
CMD ["scorebox", "--help"]
