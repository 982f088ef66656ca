"""xDS management server (ADS over gRPC, SotW and Delta) and translation of resolved HTTP policy."""
