# stockkeeper: one image for every service.
#   docker build -t stockkeeper .
#   docker run -p 8080:8080 -p 8081:8081 stockkeeper          # `up` on the embedded defaults
#   docker run stockkeeper run inventory-api                    # one service (set database.url)
# deploy/compose.yaml runs PostgreSQL, RabbitMQ and each service as its own container.
# The image is Debian slim, not Alpine: the embedded PostgreSQL's wheels need glibc.

ARG PYTHON_VERSION=3.13

# -- build: a virtualenv with stockkeeper and its dependencies, nothing else -------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m venv /opt/stockkeeper \
 && /opt/stockkeeper/bin/pip install --no-compile . \
 && /opt/stockkeeper/bin/python -m compileall -q /opt/stockkeeper/lib

# -- runtime: the virtualenv and an unprivileged user -------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 stockkeeper \
 && useradd --system --uid 10001 --gid stockkeeper --home-dir /var/lib/stockkeeper \
      --create-home --shell /usr/sbin/nologin stockkeeper \
 && install -d -o stockkeeper -g stockkeeper /var/lib/stockkeeper/data
COPY --from=build /opt/stockkeeper /opt/stockkeeper

# Listen on every interface (the defaults are 127.0.0.1, for a laptop), keep the embedded
# PostgreSQL and the generated admin token in the volume, log without buffering.
# HEALTHCHECK_URL is the inventory API's /readyz; compose points it at each service's own.
ENV PATH=/opt/stockkeeper/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STOCKKEEPER_API__HOST=0.0.0.0 \
    STOCKKEEPER_DATA_DIR=/var/lib/stockkeeper/data \
    HEALTHCHECK_URL=http://127.0.0.1:8080/readyz

# Not root: the embedded PostgreSQL then runs as this user, as PostgreSQL requires.
USER stockkeeper
WORKDIR /var/lib/stockkeeper
VOLUME ["/var/lib/stockkeeper/data"]
EXPOSE 8080 8081

# /readyz answers 200 once the database answers a query; urlopen fails on anything else.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]

# SIGTERM (docker stop) stops every server and worker of the process together.
STOPSIGNAL SIGTERM
ENTRYPOINT ["stockkeeper"]
CMD ["up"]
