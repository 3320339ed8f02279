"""udabench-example-plugin: each module registers one kind of part (see pyproject.toml)."""
