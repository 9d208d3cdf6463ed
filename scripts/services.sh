#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on 127.0.0.1, starting them as ../shared/SERVICES.md says.
# Fails loudly (exit 1) when either cannot be reached: tests never skip for a missing service.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if ! command -v pg_ctlcluster >/dev/null || ! command -v redis-server >/dev/null; then
  echo "services: installing postgresql and redis-server from Debian's packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server
fi

if ! pg_up; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! redis_up; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

for _ in $(seq 1 30); do
  if pg_up && redis_up; then break; fi
  sleep 1
done
pg_up || { echo "FATAL: PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
redis_up || { echo "FATAL: Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
# A real query, not only a port check: trust auth as SERVICES.md describes.
psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null \
  || { echo "FATAL: PostgreSQL answers but refuses a query as user postgres" >&2; exit 1; }
echo "services: PostgreSQL and Redis are up on 127.0.0.1"
