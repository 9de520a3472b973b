#!/usr/bin/env bash
# The whole test suite on a fresh machine: install, start PostgreSQL and Redis if they are down,
# provision real weights, lint and type-check, run every test. `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
python3 -m pip install -q -e '.[worker,dev]'

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }  # report screenshots, driven report, dashboard
# promtool checks and unit-tests deploy/prometheus/rules.yml; the gate posts to a real Alertmanager
command -v promtool >/dev/null || { apt-get update -q && apt-get install -y -q prometheus; }
command -v prometheus-alertmanager >/dev/null || { apt-get update -q && apt-get install -y -q prometheus-alertmanager; }
command -v kubectl >/dev/null || { apt-get update -q && apt-get install -y -q kubectl; }  # kustomize renders deploy/k8s

lpips-gate weights fetch --net alex --net vgg  # squeeze: torchvision's cache or download only

ruff check .
mypy
python3 -m pytest "$@"
