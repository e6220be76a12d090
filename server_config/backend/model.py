"""The ``langcolor`` Python-based Triton backend: one ``model.py`` for every Python model of the repository.

``langcolor serve`` copies this file to ``<backend directory>/langcolor/model.py`` (the GPU container
image does the same); each model's ``config.pbtxt`` names ``backend: "langcolor"`` and a ``role``
parameter, and the implementation lives in the installed package.

Triton's Python stub embeds its interpreter without reading ``PYTHONPATH``; the folders it names
(where ``langcolor serve`` puts its own interpreter's path) are appended here, so an install that is
not a site package, or a family module named in ``$LANGCOLOR_FAMILY_MODULES``, is found too.
"""

import os
import sys

for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        sys.path.append(_entry)

from langcolor.server.triton_backend import TritonPythonModel  # noqa: E402,F401
