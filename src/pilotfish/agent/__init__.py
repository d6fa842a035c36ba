"""The node agent: what a kubelet and a Deployment controller do, for local
processes. It watches Workload objects, runs each instance as the
application plus its own sidecar, gates registration on readiness, restarts
what dies, and rolls instances forward when their template changes.

Pure parts (spec.py, plan.py, probes.ProbeState, bootstrap.py) take values
and return values; the shells (instance.py, node.py) own processes, sockets
and threads.
"""
