"""JOSE: compact JWS parsing and RS256 checks, JWK sets, Firebase's x509 cert sets."""
