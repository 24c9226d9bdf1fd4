# Sourced by the maintainer scripts: the package's units.
SOCKETS="edgeward-keyd.socket edgeward-certd.socket edgeward-identityd.socket edgeward-tpmd.socket edgeward-edged.mgmt.socket edgeward-edged.workload.socket"
SERVICES="edgeward-keyd.service edgeward-certd.service edgeward-identityd.service edgeward-tpmd.service edgeward-edged.service"
ENABLED="$SOCKETS edgeward-edged.service"
