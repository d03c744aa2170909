"""registrator: keeps Consul's service catalog in step with the containers on a Docker host."""

__version__ = "0.1.0"
