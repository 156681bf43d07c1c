# The edge cache's backends on Kubernetes: the relay and replay Services. Event streams do
# not come here, nor publishes (the edge pod's HAProxy carries both to the relay pods:
# haproxy.cfg); varnishd passes the cookie endpoint and the misses of what it caches. Varnish
# resolves a name once, when it loads the VCL, so each backend is a Service's stable cluster
# IP; the Service spreads connections over the ready pods (readiness is /readyz, so a
# draining relay leaves it within a probe period). Probes: probes.vcl, through the Service.
backend relay_1 {
    .host = "ssedge-relay.ssedge.svc";
    .port = "8101";
    .probe = ssedge_relay_probe;
    .connect_timeout = 1s;
}

backend replay {
    .host = "ssedge-replay.ssedge.svc";
    .port = "8201";
    .probe = ssedge_replay_probe;
    .connect_timeout = 1s;
}

sub vcl_init {
    new relays = directors.round_robin();
    relays.add_backend(relay_1);
}
