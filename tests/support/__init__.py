"""Helpers shared by test tiers: the real Kubernetes control plane and its pytest fixtures."""
