"""The Docker Engine API served by silod (the counterpart of dockerd's API server).

``app.create_app(backend)`` builds the aiohttp application over a ``backend.Backend``;
``server.serve(app, socket_path)`` puts it on a unix socket and ``server.shutdown(runner)``
takes it down. Submodules are imported explicitly so that importing the protocols in
``backend`` does not pull in aiohttp.
"""
