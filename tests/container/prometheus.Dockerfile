# Stand-in for prom/prometheus on machines without registry access: Debian's prometheus package on the local
# test base. The override file compose.test.yml points docker-compose.yml's prometheus service at this image.
ARG BASE_IMAGE=local/python-base
FROM ${BASE_IMAGE}
# Debian's version is the one the base's release ships; the test only needs a Prometheus that scrapes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown 65534:65534 /prometheus
# nobody:nogroup, as in the prom/prometheus image.
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
