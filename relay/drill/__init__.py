"""ssedge drill: fault drills with loss accounting, on the local stack or a deployment."""
