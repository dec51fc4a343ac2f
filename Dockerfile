FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events events
COPY runtime runtime
COPY ingest ingest
COPY processors processors
COPY projections projections
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["sbc-sidecar"]
CMD ["run"]
