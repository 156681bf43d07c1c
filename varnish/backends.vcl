#
# ssedge backends: the relay nodes and the replay service.
#
# This file is the deployment's list of nodes; default.vcl includes it (after probes.vcl,
# which defines ssedge_relay_probe and ssedge_replay_probe). `make up` writes its
# own copy under .ssedge/varnish/ (found first on vcl_path). To add a relay node: declare a
# backend like relay_1 below and add it to the director in vcl_init. Reload with
# `varnishadm vcl.load` / `vcl.use` (no restart, streams keep flowing).
#

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
