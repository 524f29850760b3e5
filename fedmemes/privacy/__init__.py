"""What protects each member: its site policy, secure aggregation and differential privacy."""
