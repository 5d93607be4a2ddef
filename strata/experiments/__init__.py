"""Experiments: definitions (configs/experiments.yaml), assignment of users to arms, and the
statistics engine over mergeable sufficient statistics."""
