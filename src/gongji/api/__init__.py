"""gRPC servicers: decode, authorize, call one use case, encode. Thin."""
