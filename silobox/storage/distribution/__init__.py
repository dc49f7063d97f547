"""A client of the OCI distribution API (Docker registry v2): pull, push and login.

Windows' dockerd pulls into windowsfilter through the same distribution code as on Linux; here
the blobs a registry serves are checked against their sha256 digest and only then handed to the
layer store (``storage/layers.py``), whose tar-split record keeps ``save`` byte-exact.

* ``registry``: endpoints (TLS, ``certs.d``, insecure registries), auth (Basic and Bearer token
  challenges) and the HTTP client over aiohttp;
* ``manifest``: Docker schema 2 and OCI manifests, manifest lists and OCI indexes;
* ``pull``, ``push``: the two transfers, on the common base in ``transfer`` (session, stores
  and Docker's JSON progress messages);
* ``metadata``: which compressed blob a layer was pushed as, per registry and repository (Docker's
  v2 metadata), so repeated pushes name the same digests.
"""
