"""One check as named phases: credential → identity → tenant → key → policy → limits.

Knows no protobuf, no command line, and nothing of how the service is run.
"""
