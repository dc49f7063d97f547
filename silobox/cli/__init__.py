"""``silo``, the silobox command line: a Docker Engine API client over silod's unix socket.

It imports nothing of the daemon, so whatever ``silo`` does, any Docker API client can do.
"""
