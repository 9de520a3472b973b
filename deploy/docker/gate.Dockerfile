# syntax=docker/dockerfile:1
# The light image (no torch): the gate daemon, the HTTP API (`serve`), migrations and the producer
# commands (submit, wait, results, alerts). lpips-gate[api] from a wheel of this checkout, non-root.
# Build from the repository root:
#   docker build -f deploy/docker/gate.Dockerfile -t lpips-gate .

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE NOTICE ./
COPY gate gate
COPY worker worker
COPY migrations migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['api']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/pyproject.toml
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/lpips_gate-*.whl)[api]" && rm -rf /wheels

RUN useradd --create-home --uid 10001 lpips && mkdir -p /images /config
USER 10001
ENV LPIPS_GATE_IMAGE_ROOT=/images LPIPS_GATE_LOG_JSON=true
EXPOSE 8080 9465
# For the gate daemon (`gate --http-port 9465`); the api service overrides it with its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/healthz', timeout=4)"]
ENTRYPOINT ["lpips-gate"]
CMD ["gate", "--http-port", "9465", "--http-host", "0.0.0.0"]
