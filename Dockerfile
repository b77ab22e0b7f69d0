# syntax=docker/dockerfile:1
# The tokenvault peer image: one peer per container, configured by the environment
# (docs/operations.md, "Deploying"). Build from the repository root:
#     docker build -t tokenvault:0.1.0 .
#
# Rules:
# - No compiler, in either stage: every dependency comes as a wheel (--only-binary), plyvel's
#   manylinux wheel bundles LevelDB. plyvel 1.5.1 publishes wheels for CPython 3.12 on x86_64
#   only (none for 3.13, none for arm64): hence the pinned base; build for linux/amd64
#   (`docker build --platform linux/amd64 ...` on another machine).
# - Two stages: the build stage makes the virtual environment (pip, the build backend and the
#   source tree stay behind), the final stage copies only that environment.
# - The peer runs as an unprivileged user (uid 10001), as the container's only process; SIGTERM
#   stops it cleanly (the store closed, exit 0) within a few seconds.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tokenvault ./tokenvault
RUN python -m venv /opt/tokenvault \
    && /opt/tokenvault/bin/pip install --no-cache-dir --only-binary=:all: /src

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 tokenvault \
    && useradd --system --uid 10001 --gid tokenvault --no-create-home \
        --home-dir /var/lib/tokenvault --shell /usr/sbin/nologin tokenvault \
    && mkdir -p /var/lib/tokenvault /etc/tokenvault \
    && chown tokenvault:tokenvault /var/lib/tokenvault \
    && chmod 0700 /var/lib/tokenvault
COPY --from=build /opt/tokenvault /opt/tokenvault
# The defaults of a container: its configuration mounted at /etc/tokenvault, its data in the
# volume, bound on every interface at 7600 (the address in cluster.toml is what the others
# dial). TOKENVAULT_ID and TOKENVAULT_SECRET_FILE are set per container. (DL3064 takes the
# TOKEN in TOKENVAULT for a credential: these are paths and an address, never a secret.)
# hadolint ignore=DL3064
ENV PATH=/opt/tokenvault/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENVAULT_CONFIG=/etc/tokenvault/cluster.toml \
    TOKENVAULT_LISTEN=0.0.0.0:7600 \
    TOKENVAULT_DATA_DIR=/var/lib/tokenvault
USER 10001:10001
WORKDIR /var/lib/tokenvault
VOLUME ["/var/lib/tokenvault"]
EXPOSE 7600
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "tokenvault.healthcheck"]
ENTRYPOINT ["tokenvault"]
CMD ["node"]
