"""The per-service files `edgeward config apply` writes and `edgeward serve <service> --config-dir` reads.

Apart from the splitter (super_config.py), so that a service started on its own file does not load the translation
of the whole super config, and with it every other service's settings reader.
"""

from __future__ import annotations

__all__ = ["PEERS", "SERVICE_FILES"]

# The file `config apply` writes for each service (as `edgeward serve <service> --config-dir` names it).
SERVICE_FILES = {"keys": "keyd.toml", "certs": "certd.toml", "identity": "identityd.toml", "tpm": "tpmd.toml",
                 "edged": "edged.toml"}
# [edgeward.peers] in edged.toml: what the module runtime must know of the other services, whose files it cannot
# read (see super_config._Splitter.peers). Written by the splitter only; in the super config it is ignored, with a
# warning.
PEERS = "peers"
