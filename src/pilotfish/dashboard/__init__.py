"""The web dashboard and `pilotfish stat`'s data: mesh metrics kept by the
control plane as short time series, the graph built from them, and the API
and static pages that serve it."""
