#!/usr/bin/env python3
"""A known relayed load through a real turnserver vs the two traffic sources.

Usage: CLI_PASSWORD=... TURN_PASSWORD=... measure-traffic-sources.py \
           POLL_S SECONDS SESSIONS LENGTH INTERVAL_MS [TURN_PORT CLI_PORT USER]

Runs `turnutils_uclient -y -c` against 127.0.0.1:TURN_PORT (default 34780)
and reads, every second: lo's rx bytes over the last second (the
"interface" source) and coturn's relay rate as the agent's control task
computes it from `ps` listings POLL_S apart (the "turnserver" source:
growth of each session's counters; sessions younger than the interval
count all their bytes, ended sessions nothing), held between polls.
The turnserver needs its CLI on 127.0.0.1:CLI_PORT (default 35766) and
--allow-loopback-peers. docs/traffic-source.md has the results.
"""
import os
import re
import socket
import statistics
import subprocess
import sys
import time

POLL = float(sys.argv[1])
SECONDS = int(sys.argv[2])
M, L, Z = map(int, sys.argv[3:6])
TURN_PORT, CLI_PORT = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else (34780, 35766)
USER = sys.argv[8] if len(sys.argv) > 8 else "alice"
KNOWN = M * L * 8 * (1000 / Z) / 1e6


def cli(command):
    s = socket.create_connection(("127.0.0.1", CLI_PORT))
    s.settimeout(5)
    buffer = b""

    def until(marker):
        nonlocal buffer
        while marker not in buffer:
            data = s.recv(65536)
            if not data:
                break
            buffer += data

    until(b"Enter password: ")
    buffer = b""
    s.sendall(os.environ["CLI_PASSWORD"].encode() + b"\r\n")
    until(b"> ")
    buffer = b""
    s.sendall(command.encode() + b"\r\n")
    until(b"> ")
    s.close()
    return buffer.decode(errors="replace")


def lo():
    return int(open("/sys/class/net/lo/statistics/rx_bytes").read())


def listing():
    sessions = {}
    for block in re.split(r"\n\s*\d+\) id=", cli("ps"))[1:]:
        sid = block.split(",")[0]
        age = int(re.search(r"started (\d+) secs ago", block).group(1))
        usage = re.search(r"rb=(\d+), sp=\d+, sb=(\d+)", block)
        sessions[sid] = (age, int(usage.group(1)), int(usage.group(2)))
    return time.time(), sessions


def coturn_mbps(before, after):
    (t0, s0), (t1, s1) = before, after
    elapsed = t1 - t0
    rx = tx = 0
    for sid, (age, rb, sb) in s1.items():
        if sid in s0 and rb >= s0[sid][1]:
            rx += rb - s0[sid][1]
            tx += sb - s0[sid][2]
        elif age <= int(elapsed) + 1:
            rx += rb
            tx += sb
    return max(rx, tx) * 8 / 1e6 / elapsed


rows = []
began = time.time()
previous_listing = listing()
coturn = 0.0
previous_lo = (time.time(), lo())
uclient = spawned = stopped = None
while True:
    time.sleep(1)
    now = time.time()
    if uclient is None and now - began >= 3:
        uclient = subprocess.Popen(
            ["turnutils_uclient", "-y", "-c", "-l", str(L), "-m", str(M), "-z", str(Z),
             "-n", str(SECONDS * 1000 // Z), "-u", USER, "-w", os.environ["TURN_PASSWORD"],
             "-p", str(TURN_PORT), "127.0.0.1"],
            stdout=open("uclient.log", "w"), stderr=subprocess.STDOUT)
        spawned = now
    if uclient is not None and stopped is None and uclient.poll() is not None:
        stopped = now
    if now - previous_listing[0] >= POLL - 0.05:
        current = listing()
        coturn = coturn_mbps(previous_listing, current)
        previous_listing = current
    count = lo()
    lo_mbps = (count - previous_lo[1]) * 8 / 1e6 / (now - previous_lo[0])
    previous_lo = (now, count)
    rows.append((now, lo_mbps, coturn))
    print(f"t={now - began:5.1f} lo={lo_mbps:7.2f} turnserver={coturn:7.2f}", flush=True)
    if stopped and now - stopped > 12:
        break


def first(predicate, after):
    for t, lo_value, coturn_value in rows:
        if t >= after and predicate(lo_value, coturn_value):
            return round(t - after, 1)
    return None


steady = [(l, c) for t, l, c in rows if spawned + 8 <= t <= stopped - 2]
sent = re.findall(r"tot_send_bytes ~ (\d+)", open("uclient.log").read())
lo_mean = statistics.mean(l for l, _ in steady)
coturn_mean = statistics.mean(c for _, c in steady)
print(f"known {KNOWN:.2f} Mbps (uclient sent {sent[-1] if sent else '?'} B)")
print(f"interface mean {lo_mean:.2f} ({(lo_mean / KNOWN - 1) * 100:+.0f} %, /3 {(lo_mean / 3 / KNOWN - 1) * 100:+.0f} %), "
      f"reaches the load after {first(lambda l, c: l >= KNOWN, spawned)} s, "
      f"under 10 % {first(lambda l, c: l < 0.1 * KNOWN, stopped)} s after the stop")
print(f"turnserver mean {coturn_mean:.2f} ({(coturn_mean / KNOWN - 1) * 100:+.0f} %, sd {statistics.pstdev(c for _, c in steady):.2f}), "
      f"first > 5 % after {first(lambda l, c: c > 0.05 * KNOWN, spawned)} s, "
      f"within 10 % after {first(lambda l, c: abs(c - KNOWN) <= 0.1 * KNOWN, spawned)} s, "
      f"under 10 % {first(lambda l, c: c < 0.1 * KNOWN, stopped)} s after the stop")
