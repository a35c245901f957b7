"""python -m hfmini.config > docs/configuration.md"""

import sys

from hfmini.config.reference import reference_markdown

sys.stdout.write(reference_markdown())
