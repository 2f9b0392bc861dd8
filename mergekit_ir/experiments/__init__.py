"""Experiments: the registry, where inputs come from, the runner and its steps, the dry run, the quickstart."""
