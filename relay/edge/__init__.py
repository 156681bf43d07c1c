"""The edge: the programs in front of the relays (see ``contract``), each in a folder of its own."""
