"""The local stacks of `ssedge up`: supervised children, one Redis or a cluster, a second region,
the demo, and the stack's edge tier."""
