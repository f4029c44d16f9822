#!/usr/bin/env bash
# Sets up and runs turn-agent locally with config/local.toml: installs coturn
# and ZooKeeper if missing, starts a throwaway ZooKeeper on 127.0.0.1:2181,
# builds and runs the agent in the foreground. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --locked

work=/tmp/turn-agent-local
mkdir -p "$work"
chmod 700 "$work"

# A throwaway ZooKeeper, started with java directly (Debian's wrapper
# scripts ignore ZOOCFGDIR and log nothing).
zk_dir=$(mktemp -d /tmp/turn-agent-zk.XXXXXX)
mkdir -p "$zk_dir/data"
cat > "$zk_dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$zk_dir/data
clientPort=2181
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,stat
CFG
cat > "$zk_dir/log4j.properties" <<'CFG'
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${zk.log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d %p %c{1}: %m%n
CFG
java -Xmx64m -XX:+UseSerialGC -Dzk.log="$zk_dir/zookeeper.log" \
  -cp "$zk_dir:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$zk_dir/zoo.cfg" &
zk_pid=$!
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  kill "$zk_pid" 2>/dev/null || true
  wait "$zk_pid" 2>/dev/null || true
  rm -rf "$zk_dir"
}
trap cleanup EXIT INT TERM

# Ready when `srvr` reports a Mode: line (`ruok` says imok too early).
zk_ready() {
  (exec 3<>/dev/tcp/127.0.0.1/2181 && printf 'srvr' >&3 && grep -q '^Mode:' <&3) 2>/dev/null
}
for _ in $(seq 100); do
  # java exits when 2181 is taken: then the answer would be another
  # server's, not this throwaway one's.
  if ! kill -0 "$zk_pid" 2>/dev/null; then
    echo "ZooKeeper could not start: is 127.0.0.1:2181 taken by another server?" >&2
    exit 1
  fi
  zk_ready && break
  sleep 0.1
done
zk_ready || { echo "ZooKeeper did not answer on 127.0.0.1:2181 within 10 s" >&2; exit 1; }
echo "ZooKeeper is up on 127.0.0.1:2181 (data in $zk_dir)"

cat <<MSG

turn-agent is starting with config/local.toml.
  readiness:   curl -s http://127.0.0.1:8086/readyz
  credential:  curl -s http://127.0.0.1:8086/turncredential
  STUN check:  turnutils_stunclient -p 3478 127.0.0.1
Press Ctrl-C to stop the agent, turnserver and ZooKeeper.

MSG
./target/release/turn-agent run --config config/local.toml &
agent_pid=$!
wait "$agent_pid"
