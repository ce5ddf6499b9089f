"""Adaptation methods: one module per method, each registering itself with :mod:`raysel.registry`."""
