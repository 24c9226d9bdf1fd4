"""Stand-ins for the outside world (an EST server, the DPS and IoT Hub emulators), for tests and demos only.

Nothing on the production path imports this package. Import the submodules directly
(``from edgeward.testing.est_server import EstServer``): re-exporting them here would make
``python -m edgeward.testing.est_server`` import its own module twice.
"""

__all__: list[str] = []
