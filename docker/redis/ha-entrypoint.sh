#!/bin/sh
# The Redis servers and Sentinels of docker/compose.ha.yaml, on the stock redis image:
#   ha-entrypoint.sh server [MASTER_HOST [MASTER_PORT]]   a Redis server (a replica of MASTER_HOST)
#   ha-entrypoint.sh sentinel MASTER_HOST [MASTER_PORT]   a Sentinel watching MASTER_HOST
# It writes the configuration once, into the volume, and never again: from then on the file is
# the server's own. A Sentinel records the replicas, the other Sentinels and the epochs in it; a
# Sentinel sends CONFIG REWRITE to a server it promotes or demotes, so a restarted container
# keeps the role it was given last. Then the image's entrypoint starts redis-server (as user
# redis). The timings are those of `pacing up --ha` (pacing/cli/redis_ha.py, SentinelTimings).
set -e
role=${1:?usage: ha-entrypoint.sh server|sentinel [MASTER_HOST [MASTER_PORT]]}
master=${2:-}
master_port=${3:-6379}
name=${MASTER_NAME:-pacing}
self=${ANNOUNCE_HOST:?set ANNOUNCE_HOST to the name the other services reach this one by}
data=${DATA_DIR:-/data}
conf=$data/$role.conf
if [ ! -f "$conf" ]; then
    case $role in
    server)
        # appendonly: audit records staged while PostgreSQL is down survive a restart, and a
        # master that Docker restarts faster than down-after-milliseconds (so no failover
        # happens) comes back with its data instead of replicating an empty one to its replica
        cat >"$conf" <<CONF
bind ${BIND:-* -::*}
protected-mode no
port ${REDIS_PORT:-6379}
dir "$data"
save ""
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
repl-diskless-sync yes
repl-diskless-sync-delay 0
repl-ping-replica-period 1
repl-timeout 5
replica-announce-ip $self
CONF
        if [ -n "$master" ]; then
            echo "replicaof $master $master_port" >>"$conf"
        fi
        ;;
    sentinel)
        cat >"$conf" <<CONF
bind ${BIND:-* -::*}
protected-mode no
port ${SENTINEL_PORT:-26379}
dir "$data"
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $self
sentinel monitor $name ${master:?a Sentinel needs MASTER_HOST} $master_port 2
sentinel down-after-milliseconds $name ${DOWN_AFTER_MILLISECONDS:-1000}
sentinel failover-timeout $name ${FAILOVER_TIMEOUT_MILLISECONDS:-3000}
sentinel parallel-syncs $name 1
CONF
        ;;
    *)
        echo "ha-entrypoint.sh: unknown role $role (server or sentinel)" >&2
        exit 2
        ;;
    esac
fi
if [ "$role" = sentinel ]; then
    exec docker-entrypoint.sh redis-server "$conf" --sentinel
fi
exec docker-entrypoint.sh redis-server "$conf"
