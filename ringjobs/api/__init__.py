"""The HTTP API served on the daemon's unix socket."""
