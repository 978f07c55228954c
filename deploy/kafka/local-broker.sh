#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller in one
# JVM) on 127.0.0.1, from the official Kafka jars fetched from Maven Central
# with Maven. No Docker needed.
#
# Usage: deploy/kafka/local-broker.sh {fetch|start|stop|status|restart}
#
# Environment:
#   KAFKA_VERSION          Kafka release to use (default below)
#   KAFKA_PORT             PLAINTEXT listener port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port (default 9093)
#   KAFKA_SASL_SSL_PORT    also open a SASL_SSL listener on this port (default: none):
#                          TLS with a CA made here (openssl), SASL PLAIN and
#                          SCRAM-SHA-256/512 for one user; the client settings
#                          (AUDITLOG_KAFKA_*) are written to <state>/tls/client.env
#   KAFKA_SASL_USERNAME    that user (default auditlog; its password is made once
#                          and kept in <state>/tls/sasl-password)
#   AUDITLOG_KAFKA_HOME    state dir: libs, config, data, logs, pid
#                          (default <repo>/.local/kafka)
#   KAFKA_HEAP_OPTS        JVM heap flags (default -Xms128m -Xmx512m)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   JAVA_HOME              Java 17+ to use (default: java on PATH)
#   MVN                    maven command (default: mvn)
#
# Data survives stop/start; delete the state dir's data/ to start afresh.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-}"
KAFKA_SASL_USERNAME="${KAFKA_SASL_USERNAME:-auditlog}"
STATE="${AUDITLOG_KAFKA_HOME:-$REPO_ROOT/.local/kafka}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
MVN="${MVN:-mvn}"

LIBS="$STATE/libs"
CONF="$STATE/config"
DATA="$STATE/data"
LOGS="$STATE/logs"
PID_FILE="$STATE/kafka.pid"
RUN_ENV="$STATE/run.env"
BOOTSTRAP_FILE="$STATE/bootstrap"
CLUSTER_ID_FILE="$STATE/cluster-id"
TLS="$STATE/tls"
OUT_LOG="$LOGS/kafka.out"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
else
  JAVA="java"
fi

log() { printf 'local-broker: %s\n' "$*"; }
die() { printf 'local-broker: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  echo "usage: $0 {fetch|start|stop|status|restart}" >&2
  exit 2
}

# --------------------------------------------------------------------- fetch

libs_marker() { echo "$LIBS/.complete-$KAFKA_VERSION"; }

do_fetch() {
  if [[ -f "$(libs_marker)" ]]; then
    return 0
  fi
  command -v "$MVN" >/dev/null 2>&1 || die "maven ('$MVN') not found on PATH"
  local t0=$SECONDS
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS ..."
  local mvn_dir="$STATE/maven"
  mkdir -p "$mvn_dir"
  # kafka_2.13 brings the broker (kafka.Kafka), kafka.tools.StorageTool and
  # every server module transitively. The log4j2 SLF4J binding is not a
  # dependency of it (the binary distribution ships it separately); without
  # it the broker cannot log to a file, so it is added below in the same
  # log4j version that Kafka itself depends on.
  cat >"$mvn_dir/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.auditlog</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  local tmp="$STATE/libs.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  if ! "$MVN" -q -B -f "$mvn_dir/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_dir/mvn.log" 2>&1; then
    tail -n 30 "$mvn_dir/mvn.log" >&2 || true
    die "maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (see $mvn_dir/mvn.log)"
  fi
  local core log4j_version=""
  core="$(find "$tmp" -maxdepth 1 -name 'log4j-core-*.jar' | head -n 1)"
  if [[ -n "$core" ]]; then
    log4j_version="$(basename "$core" .jar)"
    log4j_version="${log4j_version#log4j-core-}"
  fi
  # Kafka 4.x uses slf4j-api 1.7.x -> the binding is log4j-slf4j-impl
  # (log4j-slf4j2-impl is for slf4j 2.x).
  local extras=()
  if [[ -z "$log4j_version" ]]; then
    log4j_version="2.24.3"
    extras+=("org.apache.logging.log4j:log4j-api:$log4j_version"
             "org.apache.logging.log4j:log4j-core:$log4j_version")
  fi
  if ! find "$tmp" -maxdepth 1 -name 'slf4j-api-2.*.jar' | grep -q .; then
    extras+=("org.apache.logging.log4j:log4j-slf4j-impl:$log4j_version")
  else
    extras+=("org.apache.logging.log4j:log4j-slf4j2-impl:$log4j_version")
  fi
  local a
  for a in "${extras[@]}"; do
    if ! "$MVN" -q -B -f "$mvn_dir/pom.xml" dependency:copy \
        -Dartifact="$a" -DoutputDirectory="$tmp" >>"$mvn_dir/mvn.log" 2>&1; then
      tail -n 30 "$mvn_dir/mvn.log" >&2 || true
      die "maven could not fetch $a (see $mvn_dir/mvn.log)"
    fi
  done
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  touch "$(libs_marker)"
  log "fetched $(find "$LIBS" -maxdepth 1 -name '*.jar' | wc -l) jars in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ process

read_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] || return 1
  echo "$pid"
}

# True if the pid file names a live kafka.Kafka process (guards against
# pid reuse after a reboot or a crash).
is_running() {
  local pid
  pid="$(read_pid)" || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
  fi
  return 0
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

current_bootstrap() {
  if [[ -f "$BOOTSTRAP_FILE" ]]; then
    cat "$BOOTSTRAP_FILE"
  else
    echo "127.0.0.1:$KAFKA_PORT"
  fi
}

java_major() {
  "$JAVA" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' | awk -F. '{ if ($1 == "1") print $2; else print $1 }'
}

# A CA of its own and a broker certificate for 127.0.0.1 and localhost, made once.
make_tls() {
  [[ -f "$TLS/broker.p12" && -s "$TLS/sasl-password" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl is needed for the SASL_SSL listener"
  mkdir -p "$TLS"
  chmod 700 "$TLS"
  log "making a CA and a broker certificate in $TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=auditlog local CA" \
    -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$TLS/broker.key" -out "$TLS/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$TLS/san.ext"
  openssl x509 -req -in "$TLS/broker.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial \
    -days 3650 -extfile "$TLS/san.ext" -out "$TLS/broker.pem" 2>/dev/null
  openssl rand -hex 16 >"$TLS/keystore-password"
  openssl pkcs12 -export -in "$TLS/broker.pem" -inkey "$TLS/broker.key" -certfile "$TLS/ca.pem" \
    -passout "pass:$(cat "$TLS/keystore-password")" -out "$TLS/broker.p12"
  openssl rand -hex 16 >"$TLS/sasl-password"
  chmod 600 "$TLS"/*
}

sasl_ssl_properties() {
  [[ -n "$KAFKA_SASL_SSL_PORT" ]] || return 0
  local ks_pw sasl_pw
  ks_pw="$(cat "$TLS/keystore-password")"
  sasl_pw="$(cat "$TLS/sasl-password")"
  cat <<PROPS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$ks_pw
listener.name.sasl_ssl.ssl.key.password=$ks_pw
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USERNAME="$sasl_pw";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
}

# SCRAM credentials live in the cluster's metadata: set (again) through the PLAINTEXT
# listener once the broker runs; then the client settings are written out.
add_scram_user() {
  local py="$1" bootstrap="$2"
  [[ -n "$py" ]] || die "the SASL_SSL listener needs a Python with confluent_kafka to add its SCRAM user"
  AUDITLOG_SASL_PASSWORD="$(cat "$TLS/sasl-password")" "$py" - "$bootstrap" "$KAFKA_SASL_USERNAME" <<'PY' \
    || die "could not add the SCRAM user"
import os, sys
from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
password = os.environ["AUDITLOG_SASL_PASSWORD"].encode()
# One credential of a user per request.
for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):
    upsert = UserScramCredentialUpsertion(sys.argv[2], ScramCredentialInfo(mechanism, 8192), password)
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
PY
  {
    echo "AUDITLOG_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_SASL_SSL_PORT"
    echo "AUDITLOG_KAFKA_SECURITY_PROTOCOL=SASL_SSL"
    echo "AUDITLOG_KAFKA_SSL_CA_LOCATION=$TLS/ca.pem"
    echo "AUDITLOG_KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
    echo "AUDITLOG_KAFKA_SASL_USERNAME=$KAFKA_SASL_USERNAME"
    echo "AUDITLOG_KAFKA_SASL_PASSWORD=$(cat "$TLS/sasl-password")"
  } >"$TLS/client.env"
  chmod 600 "$TLS/client.env"
  log "SASL_SSL listener on 127.0.0.1:$KAFKA_SASL_SSL_PORT; client settings in $TLS/client.env"
}

write_config() {
  mkdir -p "$CONF" "$DATA" "$LOGS"
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT" protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "$KAFKA_SASL_SSL_PORT" ]]; then
    make_tls
    listeners="$listeners,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"
    protocols="$protocols,SASL_SSL:SASL_SSL"
  fi
  cat >"$CONF/server.properties" <<EOF
# Generated by deploy/kafka/local-broker.sh -- rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listeners
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
$(sasl_ssl_properties)
log.dirs=$DATA
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# 16 MiB: room for a 10 MB record plus batch overhead.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
socket.request.max.bytes=104857600
num.network.threads=2
num.io.threads=4
log.retention.hours=168
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=8388608
EOF
  cat >"$CONF/log4j2.properties" <<EOF
# Generated by deploy/kafka/local-broker.sh: everything to a file, quietly.
status = warn
name = local-broker
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $LOGS/server.log
appender.file.filePattern = $LOGS/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
  cat >"$CONF/tools-log4j2.properties" <<EOF
# Generated by deploy/kafka/local-broker.sh: StorageTool, warnings to stderr.
status = warn
name = local-broker-tools
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

format_storage() {
  if [[ -f "$DATA/meta.properties" ]]; then
    return 0
  fi
  local cid
  if [[ -s "$CLUSTER_ID_FILE" ]]; then
    cid="$(cat "$CLUSTER_ID_FILE")"
  else
    cid="$("$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$CONF/tools-log4j2.properties" \
      kafka.tools.StorageTool random-uuid 2>>"$LOGS/storage-tool.log" | tail -n 1)"
    [[ -n "$cid" ]] || die "StorageTool random-uuid produced no id (see $LOGS/storage-tool.log)"
    echo "$cid" >"$CLUSTER_ID_FILE"
  fi
  log "formatting storage in $DATA (cluster id $cid)"
  # Static quorum (controller.quorum.voters): no --standalone needed, and the
  # controller port may change between runs without breaking the data dir.
  if ! "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$CONF/tools-log4j2.properties" \
      kafka.tools.StorageTool format -t "$cid" -c "$CONF/server.properties" \
      --ignore-formatted >>"$LOGS/storage-tool.log" 2>&1; then
    tail -n 30 "$LOGS/storage-tool.log" >&2 || true
    die "kafka.tools.StorageTool format failed (see $LOGS/storage-tool.log)"
  fi
}

# Python readiness probe: the broker is ready once it serves metadata that
# lists itself as a registered broker (i.e. it is unfenced and accepting
# client requests), not merely when the port accepts TCP connections.
find_probe_python() {
  local py
  for py in "$REPO_ROOT/.venv/bin/python" python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import confluent_kafka' >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

probe_ready() {
  local py="$1" bootstrap="$2"
  if [[ -z "$py" ]]; then
    port_open "${bootstrap##*:}"
    return
  fi
  "$py" - "$bootstrap" <<'PY' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
md = admin.list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
PY
}

wait_ready() {
  local bootstrap="$1" pid="$2" py="" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  py="$(find_probe_python)" || py=""
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "---- tail of $OUT_LOG" >&2; tail -n 20 "$OUT_LOG" >&2 2>/dev/null || true
      echo "---- tail of $LOGS/server.log" >&2; tail -n 40 "$LOGS/server.log" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      die "broker process $pid exited during startup"
    fi
    if port_open "${bootstrap##*:}" && probe_ready "$py" "$bootstrap"; then
      return 0
    fi
    sleep 1
  done
  echo "---- tail of $OUT_LOG" >&2; tail -n 20 "$OUT_LOG" >&2 2>/dev/null || true
  echo "---- tail of $LOGS/server.log" >&2; tail -n 40 "$LOGS/server.log" >&2 2>/dev/null || true
  die "broker not ready on $bootstrap after ${KAFKA_START_TIMEOUT}s (pid $pid still running; '$0 stop' to kill it)"
}

do_start() {
  if is_running; then
    log "already running (pid $(read_pid)), bootstrap $(current_bootstrap)"
    return 0
  fi
  rm -f "$PID_FILE"
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install Java 17+ or set JAVA_HOME)"
  local major
  major="$(java_major)"
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+, found '$major' ($JAVA)"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_SSL_PORT; do
    if port_open "$p"; then
      die "port 127.0.0.1:$p is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
  done
  do_fetch
  write_config
  format_storage
  local bootstrap="127.0.0.1:$KAFKA_PORT"
  local t0=$SECONDS
  log "starting Kafka $KAFKA_VERSION (KRaft, node 1) on $bootstrap, state in $STATE"
  # setsid: own session, so the broker outlives this shell and a Ctrl-C in
  # the caller's terminal; the inner shell records its own pid, then execs.
  # shellcheck disable=SC2016,SC2086
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
    "$JAVA" $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOGS" \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$CONF/server.properties" \
    </dev/null >"$OUT_LOG" 2>&1 &
  local pid=""
  for _ in $(seq 1 50); do
    pid="$(read_pid 2>/dev/null)" && break
    sleep 0.1
  done
  [[ -n "$pid" ]] || die "broker did not record its pid in $PID_FILE"
  {
    echo "KAFKA_VERSION=$KAFKA_VERSION"
    echo "KAFKA_PORT=$KAFKA_PORT"
    echo "KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT"
    echo "KAFKA_SASL_SSL_PORT=$KAFKA_SASL_SSL_PORT"
    echo "KAFKA_BOOTSTRAP=$bootstrap"
  } >"$RUN_ENV"
  echo "$bootstrap" >"$BOOTSTRAP_FILE"
  wait_ready "$bootstrap" "$pid"
  if [[ -n "$KAFKA_SASL_SSL_PORT" ]]; then
    add_scram_user "$(find_probe_python || true)" "$bootstrap"
  fi
  log "ready in $((SECONDS - t0))s (pid $pid); logs in $LOGS"
  log "bootstrap servers: $bootstrap"
}

do_stop() {
  if ! is_running; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  local pid
  pid="$(read_pid)"
  log "stopping broker (pid $pid) ..."
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 20s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

do_status() {
  if is_running; then
    log "running (pid $(read_pid)), bootstrap $(current_bootstrap)"
    return 0
  fi
  log "not running"
  return 1
}

[[ $# -eq 1 ]] || usage
mkdir -p "$STATE"
case "$1" in
  fetch) do_fetch; log "Kafka $KAFKA_VERSION libs ready in $LIBS" ;;
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  restart) do_stop; do_start ;;
  *) usage ;;
esac
