# syntax=docker/dockerfile:1
# The pipeline image: the Kafka consumers (`python -m streamer.consume`, the default command) and the file
# producer (`python -m producers.files`). Build from the repository root:
#   docker build -f deploy/docker/pipeline.Dockerfile -t webr-pipeline .
# No secret is baked in: the API key and S3 credentials come from the environment at run time.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY streamer/ streamer/
COPY consumers/ consumers/
COPY producers/ producers/
COPY trainer/ trainer/
# The core package only: no torch, no TRL (the trainer has its own image).
RUN /opt/venv/bin/pip install --no-compile . && /opt/venv/bin/python -c "import streamer.consume, producers.files"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="webr-pipeline" \
      org.opencontainers.image.description="WebR instruction-data factory: Kafka producers and consumers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="${SOURCE_URL}"
# tini is PID 1: it forwards SIGTERM to Python, whose handler lets in-flight documents finish
# (--grace-period-s), commits and leaves the group, and it reaps any zombie.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin webr
COPY --from=build /opt/venv /opt/venv
# WEBR_* are read by `streamer.consume` (flags win over them); the metrics port is the health check's too.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WEBR_METRICS_PORT=9108 \
    WEBR_LOG_FORMAT=json \
    WEBR_PROGRESS=false
# The HTTP ingest endpoint does not exist yet; when it does it gets its own port and health check here.
EXPOSE 9108
USER 10001:10001
WORKDIR /tmp
# Only the consumer serves HTTP; run the producer with --no-healthcheck (compose: `healthcheck: disable`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ['WEBR_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["tini", "--", "python", "-m"]
CMD ["streamer.consume"]
