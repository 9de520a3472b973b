# One image for every role: worker, gate daemon, producer commands.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md alembic.ini ./
COPY gate gate
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir -e '.[worker]'
ENV LPIPS_GATE_WEIGHTS_DIR=/weights LPIPS_GATE_IMAGE_ROOT=/images
ENTRYPOINT ["lpips-gate"]
