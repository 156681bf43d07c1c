# The edge cache's backends in compose.yaml (edge-cache): two relay nodes and the replay
# service, by service name (varnishd resolves them when it loads the VCL). Event streams do
# not come here: HAProxy (haproxy.cfg) carries them. Probes: probes.vcl.
backend relay_1 {
    .host = "relay-1";
    .port = "8101";
    .probe = ssedge_relay_probe;
    .connect_timeout = 1s;
}

backend relay_2 {
    .host = "relay-2";
    .port = "8101";
    .probe = ssedge_relay_probe;
    .connect_timeout = 1s;
}

backend replay {
    .host = "replay";
    .port = "8201";
    .probe = ssedge_replay_probe;
    .connect_timeout = 1s;
}

sub vcl_init {
    new relays = directors.round_robin();
    relays.add_backend(relay_1);
    relays.add_backend(relay_2);
}
