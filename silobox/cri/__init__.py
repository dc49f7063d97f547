"""The Container Runtime Interface (CRI v1): silod as a Kubernetes node's runtime.

A kubelet talks gRPC to ``/run/silobox/cri.sock``. Pods and their containers are ordinary
silobox containers made through the engine's API protocols (``silobox/api/backend.py``), so
``silo ps -a`` and ``docker ps`` show them, named and labelled as Kubernetes' dockershim named
them (``k8s_<container>_<pod>_<namespace>_<uid>_<attempt>``). Everything the CRI needs to answer
for a pod or container is kept in its labels: the CRI layer holds no state of its own beyond
open log files and short-lived streaming requests, so a restarted silod serves the same pods.

- ``api.proto``: the interface (our writing of its facts); ``protogen.py`` makes the stubs.
- ``runtime.py``: pod sandboxes and containers (RuntimeService).
- ``images.py``: ImageService.
- ``logs.py``: container output copied into the kubelet's log file in the CRI format.
- ``streaming.py``: the HTTP server the Exec/Attach/PortForward URLs point at.
- ``server.py``: the gRPC servicers and the socket.
"""
