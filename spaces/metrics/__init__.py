"""``evaluate`` metric modules (load by absolute path, see :func:`spaces.load_metric`)."""
