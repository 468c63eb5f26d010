"""Monitoring: drift statistics, incoming-batch intake with its state, and the drift simulator."""
