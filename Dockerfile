# Service Registry server.
#
#   docker build -t service-registry:latest .
#   docker run -p 50051:50051 -p 9464:9464 -e REDIS_URL=redis://redis:6379/0 service-registry:latest
#
# Installs the packages `make install` does, without the dev and bench extras, in two layers:
# first the dependencies (their names from the pyproject files, their versions pinned by
# constraints.txt, `make constraints`), then the source, installed editable without
# dependencies; a code change reuses the first layer. The source tree stays in /app: the server
# reads its Lua scripts from lua/ next to the server package (server/scripts.py).
#
# Without REDIS_URL the image runs the embedded store, which is not persisted (its log says
# "store: embedded, not persisted"); docker-compose.yml runs it on Redis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR

WORKDIR /app
COPY constraints.txt pyproject.toml ./
COPY client/pyproject.toml client/
RUN python -c "import tomllib; print(*(d for f in ('pyproject.toml', 'client/pyproject.toml') for d in tomllib.load(open(f, 'rb'))['project']['dependencies'] if not d.startswith('neural-hive-integration')), sep='\n')" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
COPY client/ client/
COPY server/ server/
COPY cli/ cli/
COPY benchmarks/ benchmarks/
COPY lua/ lua/
RUN pip install --no-deps -e ./client -e . \
    && python -m compileall -q client server cli benchmarks \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin registry

# Files stay root-owned and read-only to the server, which runs unprivileged.
USER 10001:10001

ENV SERVICE_REGISTRY_HOST=0.0.0.0 \
    SERVICE_REGISTRY_PORT=50051 \
    METRICS_PORT=9464 \
    LOG_FORMAT=json
# gRPC, then Prometheus metrics.
EXPOSE 50051 9464

# Through the gRPC health service (server/healthcheck.py; speaks TLS when TLS_CERT is set).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "server.healthcheck"]

# SIGTERM drains: health NOT_SERVING, watches told to resume elsewhere, in-flight calls get
# SHUTDOWN_GRACE seconds (docker stop -t should allow a few seconds more).
STOPSIGNAL SIGTERM
ENTRYPOINT ["service-registry"]
CMD ["serve"]
