# The two commands: `make up` (the local stack) and `make test` (the suite).
# Both create .venv with the pinned dependencies and install Debian's redis-server, varnish and
# haproxy when missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: up up-cluster up-regions test lint unit integration bench bench-reconnect bench-edge \
	bench-cluster bench-durability bench-idempotency bench-regions bench-metrics bench-stuck \
	bench-hostile \
	bench-compression bench-100k \
	load-report system bench-system venv clean screenshots

up: venv system
	$(BIN)/ssedge up

# the same with a local 3-primary Redis Cluster (+3 replicas) and three relay nodes
up-cluster: venv system
	$(BIN)/ssedge up --cluster

# the same with a second region: a replica of its Redis (:6391), two relays reading it
# (:9101, :9102), a replay service (:9201) and an edge (:9080); publishes in either land on
# the primary (docs/SCALING.md, "Regions")
up-regions: venv system
	$(BIN)/ssedge up --regions

# two pytest workers, a test file each at a time (its servers and module fixtures stay in one
# worker); each worker takes its servers' ports from a range of its own (tests/integration).
# A failed test runs once more (real processes racing on a shared 2-core box): the summary
# names every rerun, and a real fault fails both times
test: venv system lint bench/sseload
	$(BIN)/pytest -n 2 --dist loadfile --reruns 1

lint: venv
	$(BIN)/ruff check relay replay loadtests tests bench docs
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests --ignore=tests/integration

integration: venv system
	$(BIN)/pytest tests/integration

# Fan-out of one topic at 1,000 and 10,000 connections and several rates: ssedge (1 and 2
# workers, and through Varnish) next to nginx+Nchan and sse-starlette, with the C load client,
# and 1,000 streams each on 8 of 64 topics (ssedge-multi); about 10-15 minutes; writes
# docs/results/fanout.md and docs/results/fanout-profile.txt
bench: venv system bench-system bench/sseload
	$(BIN)/python -m bench.fanout --profile

bench/sseload: bench/sseload.c
	$(CC) -O2 -Wall -Wextra -o $@ $< -lz

# Shared compression: one topic of price ticks to 1,000 and 9,000 streams at 10 and 100
# events/s through the edge, uncompressed vs compressed once per topic by the relay vs
# HAProxy's per-connection compression; bytes, CPU and p99 per delivery (about 10 minutes;
# writes docs/results/compression.md)
bench-compression: venv system bench-system bench/sseload
	$(BIN)/python -m bench.compression --streams 1000 9000 --rates 10 100 --rx-at-wake --defer

# A hundred thousand streams on one topic straight to one relay of 8 Granian workers (each
# holds at most 18,000: under the 20,000 descriptors a process may have here), from 6 C clients on 8 loopback
# source addresses: connected, connect rate, memory per stream (relay, Redis), CPU at rest, one
# event and 1 event/s for 60 s to all of them (about 2 minutes, 3 GiB of RAM; writes
# docs/results/hundredk.md, see docs/PERFORMANCE.md). Not part of `make test` (its smoke
# version is: tests/integration/node/test_hundredk_smoke.py)
bench-100k: venv system bench/sseload
	$(BIN)/python -m bench.hundredk

# 5,000 clients reconnect at once with the same stale Last-Event-ID (loopback only)
bench-reconnect: venv system
	$(BIN)/python -m bench.reconnect_storm --clients 5000 --behind 1000

# The edge's cost per stream: 1,000 and 9,000 streams through the edge (HAProxy, as make up
# runs it) next to the same straight to a relay, and through nginx as a plain streaming proxy
# for comparison, at 10 and 100 events/s, with the C client; then HAProxy's memory per idle
# stream over TLS (HTTP/1.1 and HTTP/2). About 6 minutes; writes docs/results/edge-tier.md
# (docs/PERFORMANCE.md, docs/SCALING.md). The varnishd-only edge of before:
# python -m bench.edge_streams --streams 1000 4000
bench-edge: venv system bench-system bench/sseload
	$(BIN)/python -m bench.edge_tier --streams 1000 9000 --rates 10 100 --paths direct edge nginx

# What a refused request costs the edge (HAProxy's CPU per refused request) and what reaches
# the relays (nothing): one hostile source on 127.0.0.2 over the edge's limits, odd spellings,
# operator endpoints (about a minute; writes docs/results/hostile.md, see docs/SECURITY.md)
bench-hostile: venv system bench-stuck
	$(BIN)/python -m bench.hostile --requests 20000

# The feed and publishing on a local 3-primary Redis Cluster next to one redis-server, 100
# topics (about a minute; writes docs/results/cluster-feed.md, see docs/SCALING.md)
bench-cluster: venv system
	$(BIN)/python -m bench.cluster_feed --topics 100 --seconds 5 --samples 300

# What each durability setting costs a publisher: no persistence, AOF everysec, AOF always,
# a replica with WAIT (about 1 minute; writes docs/results/durability.md)
bench-durability: venv system
	$(BIN)/python -m bench.durability --seconds 5 --publishers 8

# What an Idempotency-Key costs a publish: latency and Redis CPU against MULTI/EXEC, Redis
# memory per key (about a minute; writes docs/results/idempotency.md)
bench-idempotency: venv system
	$(BIN)/python -m bench.idempotency --rounds 2000 --keys 100000

# Publish to reader through region A's relay (the primary) and region B's (a replica), with the
# replica's link delayed 0, 25 and 75 ms each way (about 2 minutes; writes
# docs/results/regions.md, see docs/SCALING.md)
bench-regions: venv system
	$(BIN)/python -m bench.regions --seconds 15 --rate 50 --link-delay-ms 0,25,75

# What a client that never reads costs a relay: 300 of them beside 20 readers while 30 MB are
# published, with client_queue_bytes 16, 48 (the default) and 256 KiB (about 1 minute;
# appends to docs/results/stuck-clients.md)
bench-stuck: venv system
	for q in 16384 49152 262144; do $(BIN)/python -m bench.stuck --stuck 300 --readers 20 \
		--mb 30 --event-bytes 1024 --batch 200 --rate-mb 10 --setting client_queue_bytes=$$q \
		--report docs/results/stuck-clients.md || exit 1; done

# What one /metrics scrape of a relay costs with 1, 2 and 4 workers (every worker's numbers
# gathered into one answer; docs/results/metrics-scrape.md)
bench-metrics: venv system
	$(BIN)/python -m bench.metrics_scrape --workers 1 2 4 --streams 200 --scrapes 200

# One run of each Locust scenario against the running stack (`make up` in another shell),
# sized for a 2-core machine; writes docs/results/load/ and prints the table for docs/LOAD.md.
LOAD := $(BIN)/ssedge load --results docs/results/load --duration 60s
load-report: venv
	-$(LOAD) fanout --users 500 --spawn-rate 100
	-$(LOAD) many-topics --users 500 --spawn-rate 100 --set topics=50
	-$(LOAD) reconnect-storm --users 500 --spawn-rate 100
	-$(LOAD) slow-consumer --users 200 --spawn-rate 100
	-$(LOAD) publish-burst --users 100 --spawn-rate 100
	-$(LOAD) edge-cache --users 100 --spawn-rate 100
	$(BIN)/python -m loadtests.report docs/results/load

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,load,bench]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Screenshots of the live feed and the dashboard (docs/img/) from the running stack
# (`make up` in another shell), after a minute of load so the plots have data
screenshots: venv system
	$(BIN)/python docs/screenshots.py --out docs/img

# Debian packages the stack runs; chromium for the pages' browser tests; promtool (package
# prometheus) and systemd-analyze for the checks of docs/deploy/: installed with apt-get when
# run as root, else one line saying what to install.
system:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v varnishd >/dev/null 2>&1 || test -x /usr/sbin/varnishd || missing="$$missing varnish"; \
	command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	test -x /usr/bin/chromium || missing="$$missing chromium fonts-dejavu-core"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing gcc libc6-dev"; \
	test -f /usr/include/zlib.h || missing="$$missing zlib1g-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing (install with: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

# nginx with Nchan, the C peer of `make bench`; installed like `system`
bench-system:
	@test -f /usr/include/zlib.h || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      zlib1g-dev >/dev/null; \
	  else \
	    echo "missing: zlib headers for bench/sseload (sudo apt-get install zlib1g-dev)"; exit 1; \
	  fi; }
	@test -f /usr/lib/nginx/modules/ngx_nchan_module.so || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nginx libnginx-mod-nchan with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      nginx libnginx-mod-nchan >/dev/null; \
	  else \
	    echo "missing: nginx with Nchan (sudo apt-get install nginx libnginx-mod-nchan)"; exit 1; \
	  fi; }

clean:
	rm -f bench/sseload
	rm -rf $(VENV) .ssedge .pytest_cache .mypy_cache .ruff_cache
