#
# Health probes for ssedge backends; default.vcl includes this before backends.vcl, so a
# deployment's own backends.vcl only lists its nodes.
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
