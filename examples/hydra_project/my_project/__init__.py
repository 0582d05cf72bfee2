"""An ordinary Lightning project: nothing here knows about federated learning."""
