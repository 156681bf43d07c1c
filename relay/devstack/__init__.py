"""Local stacks (make up, tests, bench): processes, supervision, Varnish, demo."""
