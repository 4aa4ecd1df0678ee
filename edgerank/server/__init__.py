"""The daemon's transports: gRPC servicers, the error table, the transport-free service."""
