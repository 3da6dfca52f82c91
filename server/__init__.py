"""Service Registry server: gRPC layer over the Lua scripts in ../lua."""
