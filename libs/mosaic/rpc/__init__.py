"""gRPC plumbing shared by every service: one way to start a server, one way to open a channel."""
