#
# ssedge backends: the relay nodes and the replay service.
#
# This file is the deployment's list of nodes; default.vcl includes it. `make up` writes its
# own copy under .ssedge/varnish/ (found first on vcl_path). To add a relay node: declare a
# backend like relay_1 below and add it to the director in vcl_init. Reload with
# `varnishadm vcl.load` / `vcl.use` (no restart, streams keep flowing).
#

# A relay that fails readiness (Redis unreachable, draining, dead) is out after 2 of the last
# 3 probes, i.e. within about 2 seconds; a retry in vcl_backend_error covers the gap.
probe ssedge_relay_probe {
    .url = "/readyz";
    .interval = 1s;
    .timeout = 1s;
    .window = 3;
    .threshold = 2;
    .initial = 2;
}

probe ssedge_replay_probe {
    .url = "/readyz";
    .interval = 2s;
    .timeout = 1s;
    .window = 3;
    .threshold = 2;
    .initial = 2;
}

backend relay_1 {
    .host = "127.0.0.1";
    .port = "8101";
    .probe = ssedge_relay_probe;
    .connect_timeout = 1s;
}

backend relay_2 {
    .host = "127.0.0.1";
    .port = "8102";
    .probe = ssedge_relay_probe;
    .connect_timeout = 1s;
}

backend replay {
    .host = "127.0.0.1";
    .port = "8201";
    .probe = ssedge_replay_probe;
    .connect_timeout = 1s;
}

sub vcl_init {
    new relays = directors.round_robin();
    relays.add_backend(relay_1);
    relays.add_backend(relay_2);
}
