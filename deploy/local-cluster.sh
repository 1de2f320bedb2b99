#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for trying loanflow against a cluster
# (and for the cluster test): nodes lf1, lf2 and lf3 @localhost, AMQP on 5681-5683,
# management on 15681-15683, each with its own data directory under
# ${LOANFLOW_CLUSTER_DIR:-target/cluster}. The services list all three:
#   LOANFLOW__BROKER__URL=amqp://127.0.0.1:5681/loanflow,amqp://127.0.0.1:5682/loanflow,amqp://127.0.0.1:5683/loanflow
#
#   deploy/local-cluster.sh start          # starts the three and joins lf2, lf3 to lf1
#   deploy/local-cluster.sh stop           # stops them (the data directories stay)
#   deploy/local-cluster.sh stop-node 2    # stops one node, start-node 2 brings it back
#   deploy/local-cluster.sh status
#   deploy/local-cluster.sh queues VHOST   # each queue's own count (the management API's
#                                          # figures lag, and stall after a node is lost)
set -euo pipefail
cd "$(dirname "$0")/.."
# RabbitMQ's own scripts, not Debian's wrappers (which switch to the rabbitmq user and
# drop the environment that places each node); the nodes share the broker's cookie.
export HOME=${RABBITMQ_HOME_FOR_COOKIE:-/var/lib/rabbitmq}
base=${LOANFLOW_CLUSTER_DIR:-$PWD/target/cluster}
nodes=(lf1 lf2 lf3)

on_node() { # on_node <1-3> <command...>: runs a RabbitMQ command with that node's environment
  local i=$(($1 - 1)); shift
  local name=${nodes[i]} dir="$base/${nodes[i]}"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$((5681 + i))
management.tcp.ip = 127.0.0.1
management.tcp.port = $((15681 + i))
CONF
  echo "[rabbitmq_management]." > "$base/enabled_plugins"
  RABBITMQ_NODENAME="$name@localhost" RABBITMQ_NODE_PORT=$((5681 + i)) RABBITMQ_DIST_PORT=$((25681 + i)) \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$PWD/deploy/rabbitmq/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_PID_FILE="$dir/pid" "$@"
}

ctl() { # ctl <1-3> <rabbitmqctl arguments...>
  local i=$1; shift
  on_node "$i" /usr/lib/rabbitmq/bin/rabbitmqctl -n "${nodes[i - 1]}@localhost" -q "$@"
}

launch_node() { # launch_node <1-3>: starts it unless it runs, without waiting
  ctl "$1" status >/dev/null 2>&1 || on_node "$1" /usr/lib/rabbitmq/bin/rabbitmq-server -detached
}

start_node() { # start_node <1-3>: starts it unless it runs, and waits until it has booted
  launch_node "$1"
  wait_node "$1"
}

wait_node() { # wait_node <1-3>: waits until it has booted
  for _ in $(seq 1 120); do
    ctl "$1" await_startup --timeout 60 >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "node ${nodes[$1 - 1]} did not start: see $base/${nodes[$1 - 1]}/log" >&2
  return 1
}

case "${1:-}" in
  start)
    # All three at once: a node that was stopped before the others waits at boot for the
    # tables of the nodes that outlived it, so none may wait for another to boot first.
    for i in 1 2 3; do launch_node "$i"; done
    for i in 1 2 3; do wait_node "$i"; done
    for i in 2 3; do
      if ! ctl "$i" cluster_status --formatter json | grep -q '"lf1@localhost"'; then
        ctl "$i" stop_app
        ctl "$i" join_cluster lf1@localhost
        ctl "$i" start_app
      fi
    done
    ctl 1 await_online_nodes 3 --timeout 120
    echo "cluster up: amqp://127.0.0.1:5681,5682,5683 (management http://127.0.0.1:15681/api)"
    ;;
  stop)
    for i in 3 2 1; do ctl "$i" stop 2>/dev/null || true; done
    ;;
  stop-node) ctl "$2" stop ;;
  start-node) start_node "$2" ;;
  status) ctl 1 cluster_status ;;
  queues)
    # Read from the replica on the first node that answers: messages ready, checked out
    # to consumers, and held for dead-lettering, as the queue's state machine has them.
    for i in 1 2 3; do
      ctl "$i" eval "lists:map(fun(Q) -> {RaName, _} = amqqueue:get_pid(Q), {resource, _, queue, Name} = amqqueue:get_name(Q),
        case ra:local_query({RaName, node()}, fun rabbit_fifo:overview/1) of
          {ok, {_, O}, _} -> {Name, maps:with([num_ready_messages, num_checked_out, num_discarded, num_discard_checked_out, num_consumers], O)};
          Other -> {Name, Other} end end, rabbit_amqqueue:list(<<\"$2\">>))." 2>/dev/null && break
    done
    ;;
  *) echo "usage: $0 start | stop | stop-node N | start-node N | status | queues VHOST" >&2; exit 2 ;;
esac
