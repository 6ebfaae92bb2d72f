# syntax=docker/dockerfile:1
# The trainer image: `python -m trainer.run` (TRL SFT) on a CUDA base. Build from the repository root:
#   docker build -f deploy/docker/trainer.Dockerfile -t webr-trainer .
# torch comes from the index named by TORCH_INDEX_URL (a CUDA build matching the base's CUDA 12.8); its wheels
# carry the CUDA libraries, so the runtime stage needs only the base image and the host's NVIDIA driver.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_SPEC=torch
# Extra packages, e.g. "deepspeed" for deploy/accelerate/zero3.yaml.
ARG EXTRA_PIP=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# The distribution's Python 3.12 (the project needs >= 3.11); the base image's tag fixes the release, so the
# packages are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core/ core/
COPY trainer/ trainer/
# torch first, from the CUDA index, so the project's extra does not resolve it to another build.
# hadolint ignore=SC2086
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && /opt/venv/bin/pip install ".[train]" ${EXTRA_PIP} \
    && /opt/venv/bin/python -c "import trainer.run, trl, torch"

FROM ${CUDA_IMAGE}
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="webr-trainer" \
      org.opencontainers.image.description="WebR instruction-data factory: periodic SFT on new snapshots (TRL, CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="${SOURCE_URL}"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/webr --shell /usr/sbin/nologin webr \
    && install -d -o 10001 -g 10001 /var/lib/webr-trainer /models
COPY --from=build /opt/venv /opt/venv
# The work dir (lock, frozen training set, checkpoints) is a volume so a killed run resumes; HF caches go there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/var/lib/webr-trainer/hf
VOLUME ["/var/lib/webr-trainer"]
USER 10001:10001
WORKDIR /home/webr
# tini -g: SIGTERM reaches every process of the group (accelerate launch and its ranks too). A killed run
# keeps its checkpoints in the work dir and the next run resumes it. The trainer serves no HTTP: no health check.
ENTRYPOINT ["tini", "-g", "--"]
CMD ["python", "-m", "trainer.run", "--config", "/etc/webr/trainer.yaml"]
