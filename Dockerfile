FROM python:3.11-slim-bookworm
# gcc: the hot-path modules are compiled with mypyc (runtime/compiled.py); without it they run as Python
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events events
COPY runtime runtime
COPY ingest ingest
COPY processors processors
COPY projections projections
COPY scripts/compile.py scripts/compile.py
RUN pip install --no-cache-dir -e . "setuptools>=77" "mypy>=1.10" && python scripts/compile.py
USER nobody
ENTRYPOINT ["sbc-sidecar"]
CMD ["run"]
