"""Real deployments on Flower's SuperLink/SuperNodes: processes, TLS material, manager and status APIs."""
