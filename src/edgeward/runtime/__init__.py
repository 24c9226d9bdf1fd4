"""Module runtime: engines, registrations, the management and workload APIs, the watchdog."""
