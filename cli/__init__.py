"""The `service-registry` console command."""
