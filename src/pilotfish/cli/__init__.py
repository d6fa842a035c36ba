"""The `pilotfish` command: kubectl's habits for the mesh's resources."""
