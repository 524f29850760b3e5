"""The federated core: Flower's ServerApp and ClientApp, each node's data, the training loops and client corrections."""
