# Coordinator side: runs the ServerApp of every federated run.
#
# The SuperLink itself runs from Flower's unmodified flwr/superlink image in
# process isolation (see compose.yml). This image is the SuperExec that picks
# up each run from the SuperLink and starts flwr-serverapp, so it must hold
# Python 3.11 and the project's dependencies: the SuperLink never installs
# dependencies at run time. The app code itself arrives with each run.
ARG FLWR_VERSION=1.42.0
FROM flwr/superexec:${FLWR_VERSION}-py3.11-ubuntu24.04

WORKDIR /app
# The editable install keeps configs/ beside the packages, where the code
# looks for it, and brings the pinned dependencies (TensorFlow, Keras,
# pandas, scikit-learn, imbalanced-learn) into the virtual environment.
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app common ./common
COPY --chown=app:app client ./client
COPY --chown=app:app server ./server
COPY --chown=app:app configs ./configs
RUN python -m pip install --no-cache-dir -e . \
    && mkdir -p /app/checkpoints

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

VOLUME ["/app/checkpoints"]
ENTRYPOINT ["flower-superexec"]
