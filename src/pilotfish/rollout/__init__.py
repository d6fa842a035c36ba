"""Progressive delivery: Flagger's Canary kind run against the mesh.

canary.py reads a Canary; phases.py decides (pure); router.py says what the
primary, services and routes look like for a status; scheduler.py does the
I/O; metrics/ measures; webhooks.py and loadtester.py talk to the outside.
"""
