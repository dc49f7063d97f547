"""``docker build``: the Dockerfile parser, the classic builder and its layer cache."""
