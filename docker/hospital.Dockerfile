# Hospital side: a SuperNode that runs the ClientApp next to the site's data.
#
# The container runs "python -m client.supernode", which checks the site's
# credentials and data file, writes the node config and runs
# flower-supernode with TLS to the SuperLink, site authentication and an
# encrypted loopback link to the ClientApp processes it starts.
ARG FLWR_VERSION=1.42.0
FROM flwr/supernode:${FLWR_VERSION}-py3.11-ubuntu24.04

WORKDIR /app
# The editable install keeps configs/ beside the packages, where the code
# looks for it, and brings the pinned dependencies into the virtual environment.
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app common ./common
COPY --chown=app:app client ./client
COPY --chown=app:app server ./server
COPY --chown=app:app configs ./configs
RUN python -m pip install --no-cache-dir -e . \
    && mkdir -p /app/work

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# /data holds the site's flow file (read-only); /app/work keeps the node
# config, the egress audit and Flower's state.
VOLUME ["/app/work"]
ENTRYPOINT ["python", "-m", "client.supernode"]
