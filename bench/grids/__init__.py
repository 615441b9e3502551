"""Built-in grids (smoke, paper, full) shipped as YAML files beside this module."""
