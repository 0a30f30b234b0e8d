"""Verifiable worlds: synthetic trajectories whose every step label is known exactly."""
