# Stand-in for the official python slim image, for machines that reach no image
# registry: Debian bookworm (from debootstrap, imported as DEBIAN_IMAGE) with its own
# python3 and venv. The build context may carry extra CA certificates in ca/ (the
# machine's, when its egress to the package registries is TLS-inspected); pip uses
# the system bundle through PIP_CERT.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
