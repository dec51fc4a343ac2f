"""The load benchmark: sipp ladders of registrations and OPTIONS against the running sidecar."""
