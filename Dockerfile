# One image for every scorebox container of compose.yaml (migrate, training, service, worker,
# beat, dashboard): they run the same code with the same dependencies, only the command differs.
# The production serving image is the one `bentoml containerize` builds (scripts/containerize).
FROM python:3.11-slim

# ORT_DISABLE_TELEMETRY: ONNX Runtime's telemetry (on by default, Linux too) would persist a
# device id under ~/.cache, which a read-only root file system refuses (Kubernetes' pods).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_HOME=/home/scorebox/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONPATH=/app

# The non-root user and the folders compose mounts named volumes on (the model store, training's
# signing key, the trusted public keys): a new named volume takes its folder's owner, so the
# user can write them.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin scorebox \
    && mkdir -p /home/scorebox/bentoml \
        /home/scorebox/.config/scorebox/signing /home/scorebox/.config/scorebox/trusted \
    && chmod 700 /home/scorebox/.config/scorebox/signing \
    && chown -R scorebox:scorebox /home/scorebox \
    && mkdir -p /app/reports && chown scorebox:scorebox /app/reports

WORKDIR /app

# Dependencies first, in a layer that is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source tree as .dockerignore leaves it: every package of the project comes along, so no
# list of packages here can forget one.
COPY . ./
RUN pip install --no-deps . && rm -rf build ./*.egg-info

USER 10001
# Says in one line when a volume mounted for the user is not writable, then runs the command.
ENTRYPOINT ["python", "-m", "scorebox.container"]
CMD ["scorebox", "--help"]
