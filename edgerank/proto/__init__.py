"""Generated gRPC code (see _generate.py); the .proto sources live in proto/ at the top."""
