"""fedmemes' packaged Hydra configs; importing it registers the typed schema that config.yaml names first."""

from fedmemes.config_schema import register

register()
