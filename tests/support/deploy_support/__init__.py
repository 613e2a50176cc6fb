"""Helpers of the deployment tests: compose file loading, kustomize rendering, bundled schemas."""
