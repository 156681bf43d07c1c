"""Everything ssedge keeps in Redis: clients, streams, history pages, journal, keys."""
