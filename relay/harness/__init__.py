"""Real processes for the tests and the benchmarks (servers, an edge, a Redis Cluster), and the
one helper for ports, start, wait and stop that the local stacks use too."""
