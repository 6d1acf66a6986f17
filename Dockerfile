# One image for the operator (`faultlab operator run`) and every node kind
# (`faultlab-node <kind> ...`; pods set `command:` to it).
#   docker build -t faultlab:dev .
# Stage `build` compiles wheels (compilers live only there); the final stage is a
# slim, non-root runtime that installs those wheels offline.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first: this layer is reused while only the source changes.
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY nodes ./nodes
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=65532
LABEL org.opencontainers.image.title="faultlab" \
      org.opencontainers.image.description="faultlab operator and node services (faultlab, faultlab-node)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels faultlab \
    && groupadd --system --gid ${UID} faultlab \
    && useradd --system --uid ${UID} --gid ${UID} --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin faultlab \
    && mkdir -p /var/lib/faultlab \
    && chown ${UID}:${UID} /var/lib/faultlab \
    && faultlab --version && faultlab-node --help >/dev/null
USER 65532:65532
WORKDIR /var/lib/faultlab
EXPOSE 8080 9090
ENTRYPOINT ["faultlab"]
CMD ["operator", "run", "--all-namespaces"]
