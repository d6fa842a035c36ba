"""The control plane process: the REST API over the store (and, later, xDS,
the CA and the rollout controller), started by `pilotfish controlplane`."""
