# syntax=docker/dockerfile:1
# The GPU worker: CUDA torch and lpips-gate[worker,exr] from a wheel of this checkout (not editable),
# run as a non-root user. Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t lpips-gate-worker .
# Layers: torch (rarely changes), the dependencies (change with pyproject.toml), then the package.

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE NOTICE ./
COPY gate gate
COPY worker worker
COPY migrations migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; print('\n'.join(p['dependencies'] + extras['worker'] + extras['exr']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/pyproject.toml
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/lpips_gate-*.whl)[worker,exr]" && rm -rf /wheels

RUN useradd --create-home --uid 10001 lpips \
 && mkdir -p /weights /images /var/lib/lpips-gate \
 && chown lpips /weights /var/lib/lpips-gate
USER 10001
ENV LPIPS_GATE_WEIGHTS_DIR=/weights \
    LPIPS_GATE_IMAGE_ROOT=/images \
    LPIPS_GATE_HEARTBEAT_FILE=/var/lib/lpips-gate/heartbeat \
    LPIPS_GATE_METRICS_PORT=9464 \
    LPIPS_GATE_LOG_JSON=true
EXPOSE 9464
# Liveness reads the heartbeat file only (no CUDA, no database): a pool process touched it recently.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
  CMD ["lpips-gate", "health", "--check", "live"]
ENTRYPOINT ["lpips-gate"]
CMD ["worker"]
