"""Generated gRPC stubs for the Service Registry (`make proto`; do not edit)."""
from . import service_registry_pb2, service_registry_pb2_grpc

__all__ = ["service_registry_pb2", "service_registry_pb2_grpc"]
