"""The project's own gRPC APIs, generated from protos/ by scripts/gen_protos.py.

Do not edit what is below this package: change the .proto and regenerate. Code that
serves or calls these APIs lives in authz/edge/ (admin_grpc.py) and authz/cli/.
"""
