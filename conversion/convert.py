"""The conversion tool from a checkout: `python conversion/convert.py ARGS` is `dlm-jax convert ARGS`."""

import sys

from dlm_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
